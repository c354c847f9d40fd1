"""autopeft from Python: estimate two methods, fine-tune with the cheaper one, merge it, and use it.

    python examples/sdk.py            # about 3 minutes on 2 CPU cores
"""

from __future__ import annotations

import shutil
from pathlib import Path

import autopeft

HERE = Path(__file__).resolve().parent
DATA = HERE / "instructions.jsonl"


def main() -> None:
    # what each candidate would cost on the embedded SmolLM2-135M, before loading any weights
    estimates = [autopeft.estimate("smollm2-135m", name, batch_size=8, seq_len=128, device="cpu")
                 for name in ("lora", "ia3")]
    for est in estimates:
        print(f"{est.method}: {est.trainable_params:,} trainable, peak {est.peak_memory_bytes / 1e9:.2f} GB")
    cheaper = min(estimates, key=lambda e: e.peak_memory_bytes).method

    run = autopeft.train(str(DATA), method=cheaper, output_dir="runs/sdk-example", max_steps=20, overwrite=True)
    print(f"{run.method}: validation loss {run.metrics['eval_loss_before']:.3f} -> {run.metrics['eval_loss']:.3f}, "
          f"measured peak {run.peak_memory_bytes / 1e9:.2f} GB in {run.seconds:.0f} s")

    shutil.rmtree("runs/sdk-example-merged", ignore_errors=True)  # export never writes over a directory
    merged = autopeft.export_merged(run.output_dir, "runs/sdk-example-merged")
    print(f"merged into {merged.output_dir} (logits changed by at most {merged.max_abs_diff:.2g})")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged.output_dir)
    model = AutoModelForCausalLM.from_pretrained(merged.output_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Give one tip for sleeping well."}],
                                           tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=40, do_sample=False)
    print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))


if __name__ == "__main__":
    main()
