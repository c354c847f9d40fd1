"""BitFit's own tests: autopeft's conformance checks, run by the plugin on itself."""

from autopeft.testing import check_method
from autopeft_bitfit import BitFit


def test_bitfit_meets_autopeft_s_method_contract_on_both_tasks():
    check_method(BitFit())


def test_bitfit_trains_only_biases_and_the_head():
    from autopeft.testing import tiny_model

    model = BitFit().build(tiny_model("seq-cls"), BitFit().settings({}), "seq-cls")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".bias") or n.startswith("classifier.") for n in trainable)
