"""The plugin system: built-ins arrive through the entry-point group; broken plugins are isolated."""

from __future__ import annotations

import pytest

import autopeft
from autopeft.methods import registry as plugins
from autopeft import Capabilities, Method, SearchSpace
from autopeft.testing import check_method

REQUIRED = {"lora", "rslora", "dora", "loraplus", "lorafa", "pissa", "vera", "ia3", "oft", "boft", "loha", "lokr",
            "adalora", "fourierft", "vblora", "miss", "c3a", "randlora", "shira", "beft", "lily", "gralora",
            "ln_tuning", "prompt_tuning", "prefix_tuning", "ptuning", "galore", "full", "pvera", "road",
            "tinylora", "trainable_tokens", "unilora", "waveft", "shadow", "supertuning", "cartridge",
            "olora", "lora_orthogonal", "mica", "kasa", "velora", "monteclora", "bdlora", "alora", "eva", "corda",
            "loraga",
            "adamss", "adaption_prompt", "deft", "delora", "frod", "glora", "hira", "hra", "osf", "peanut", "psoft"}


class _Tiny(Method):
    name = "tiny-test-method"
    family = "test"
    description = "a method registered by a test"
    capabilities = Capabilities(merge=False, quantized=False, multi_adapter=False, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(1e-3,))

    def build(self, model, settings, task):
        return model


class GoodPlugin:
    @autopeft.hookimpl
    def register_methods(self, register):
        register(_Tiny())


class RaisingPlugin:
    @autopeft.hookimpl
    def register_methods(self, register):
        raise RuntimeError("boom")


class WrongTypePlugin:
    @autopeft.hookimpl
    def register_methods(self, register):
        register({"name": "not-a-method"})


class _NoCapabilities(Method):
    name = "no-capabilities"
    family = "test"
    description = "forgot its capabilities"
    search_space = SearchSpace(learning_rate=(1e-3,))

    def build(self, model, settings, task):
        return model


class _NoBuild(Method):
    name = "no-build"
    family = "test"
    description = "forgot to build"
    capabilities = _Tiny.capabilities
    search_space = SearchSpace(learning_rate=(1e-3,))


class IncompletePlugin:
    @autopeft.hookimpl
    def register_methods(self, register):
        register(_NoCapabilities())
        register(_NoBuild())
        register(_Tiny())


class TypoPlugin:
    @autopeft.hookimpl
    def register_method(self, register):  # misspelt hook name
        register(_Tiny())


@pytest.fixture
def registered():
    names = []

    def add(plugin, name):
        names.append(name)
        return plugins.register_plugin(plugin, name=name, source=f"test-{name}")

    yield add
    for name in names:
        plugins.unregister_plugin(name)


def test_every_builtin_method_is_registered_through_the_entry_point_group():
    methods = plugins.get_methods()
    assert REQUIRED <= set(methods)
    assert all(methods[name].source == "autopeft" for name in REQUIRED)


def test_every_method_describes_itself_completely():
    for info in autopeft.list_methods():
        assert info.description and info.family
        assert set(info.tasks) <= set(autopeft.TASKS) and info.tasks
        assert info.search_space.learning_rate, f"{info.name} has no learning rates to search"
        assert all(0 < lr < 1 for lr in info.search_space.learning_rate)
        for task, rates in info.search_space.task_learning_rate.items():
            assert task in info.tasks and rates and all(0 < lr < 1 for lr in rates), f"{info.name}: {task} {rates}"
        assert set(info.search_space.settings) <= set(info.settings), f"{info.name} searches unknown settings"


def test_aliases_resolve_and_unknown_names_suggest():
    assert autopeft.get_method("lora+").name == "loraplus"
    assert autopeft.get_method("LoRA-FA").name == "lorafa"
    with pytest.raises(autopeft.UnknownMethodError, match="did you mean 'lora'"):
        autopeft.get_method("loar")


def test_a_registered_plugin_competes_like_a_builtin(registered):
    assert registered(GoodPlugin(), "good")
    method = autopeft.get_method("tiny-test-method")
    assert method.source == "test-good"


def test_a_plugin_that_raises_is_reported_by_name_and_the_rest_keep_working(registered):
    registered(RaisingPlugin(), "raising")
    methods = plugins.get_methods()
    assert "lora" in methods
    failures = {f.plugin: f.error for f in plugins.plugin_failures()}
    assert "boom" in failures["raising"]


def test_a_plugin_registering_the_wrong_type_is_reported(registered):
    registered(WrongTypePlugin(), "wrongtype")
    plugins.get_methods()
    failures = {f.plugin: f.error for f in plugins.plugin_failures()}
    assert "not an autopeft.Method" in failures["wrongtype"]


def test_a_plugin_with_a_misspelt_hook_is_rejected_not_silently_ignored(registered):
    assert not registered(TypoPlugin(), "typo")
    failures = {f.plugin: f.error for f in plugins.plugin_failures()}
    assert "register_method" in failures["typo"]


def test_a_duplicate_method_name_is_reported_and_the_first_kept(registered):
    class Dup(GoodPlugin):
        pass

    registered(GoodPlugin(), "first")
    registered(Dup(), "second")
    assert autopeft.get_method("tiny-test-method").source == "test-first"
    failures = {f.plugin: f.error for f in plugins.plugin_failures()}
    assert "already registered" in failures["second"]


def test_a_method_name_that_could_escape_the_output_dir_is_refused(registered):
    class Escaping(_Tiny):
        name = "../../outside"

    class EscapingPlugin:
        @autopeft.hookimpl
        def register_methods(self, register):
            register(Escaping())

    registered(EscapingPlugin(), "escaping")
    assert "../../outside" not in plugins.get_methods()
    failures = {f.plugin: f.error for f in plugins.plugin_failures()}
    assert "'../../outside' is not lowercase letters" in failures["escaping"]


def test_settings_are_validated_with_a_message_naming_the_setting():
    lora = autopeft.get_method("lora")
    assert lora.settings({"r": 8}).r == 8
    with pytest.raises(autopeft.BadInputError, match="unknown lora setting 'rank'; known: target_modules, r, alpha, dropout"):
        lora.settings({"rank": 8})
    with pytest.raises(autopeft.BadInputError, match="'r'"):
        lora.settings({"r": 0})


def test_an_incomplete_method_is_named_with_what_it_lacks_and_its_neighbours_still_register(registered):
    assert registered(IncompletePlugin(), "incomplete")
    methods = plugins.get_methods()
    assert "tiny-test-method" in methods and REQUIRED <= set(methods)
    assert "no-capabilities" not in methods and "no-build" not in methods
    errors = [f.error for f in plugins.plugin_failures() if f.plugin == "incomplete"]
    assert any("'no-capabilities'" in e and "no capabilities (a Capabilities)" in e for e in errors), errors
    assert any("'no-build'" in e and "no build()" in e for e in errors), errors


def test_autopeft_methods_lists_every_complete_method_beside_an_incomplete_one(registered):
    from click.testing import CliRunner

    from autopeft.cli import main

    registered(IncompletePlugin(), "incomplete")
    result = CliRunner().invoke(main, ["methods", "--json"])
    assert result.exit_code == 0, result.output
    import json

    listed = {m["name"] for m in json.loads(result.stdout)}
    assert REQUIRED | {"tiny-test-method"} <= listed and "no-capabilities" not in listed
    assert "no-capabilities" in result.stderr and "skipped" in result.stderr


class _Explodes(_Tiny):
    name = "explodes"

    def build(self, model, settings, task):
        raise ValueError("this model is not for me")


class _TouchesTheBase(_Tiny):
    """Trains the head, but its optimizer also nudges the frozen embeddings."""

    name = "touches-the-base"

    def build(self, model, settings, task):
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("model.layers.0."))
        return model

    def optimizer(self, model, settings, *, learning_rate, weight_decay=0.0):
        import torch

        embeddings = model.get_input_embeddings().weight

        class Drifts(torch.optim.SGD):
            def step(self, closure=None):
                super().step(closure)
                with torch.no_grad():
                    embeddings.add_(1.0)

        return Drifts([p for p in model.parameters() if p.requires_grad], lr=learning_rate)


def test_check_method_passes_a_builtin_and_fails_a_method_whose_build_raises():
    check_method(autopeft.get_method("lora"), {"r": 4})
    with pytest.raises(AssertionError, match="explodes on a tiny llama \\(causal-lm\\): build\\(\\) raised ValueError"):
        check_method(_Explodes())
    with pytest.raises(AssertionError, match="incomplete: no build"):
        check_method(_NoBuild())
    with pytest.raises(AssertionError, match="changed frozen parameters"):
        check_method(_TouchesTheBase(), tasks=("causal-lm",))
