import pytest

from mergekit_vision.registry import ALL_REGISTRIES, PluginParams, Registry, UnknownPluginError


def test_unknown_name_lists_valid_names():
    registry: Registry = Registry("widgets")

    @registry.register("alpha")
    class Alpha:
        pass

    @registry.register("beta")
    class Beta:
        pass

    with pytest.raises(UnknownPluginError) as err:
        registry.get("gamma")
    assert "unknown widgets plugin 'gamma'" in str(err.value)
    assert "alpha, beta" in str(err.value)


def test_double_registration_of_a_different_class_is_refused():
    registry: Registry = Registry("widgets")

    @registry.register("alpha")
    class Alpha:
        pass

    with pytest.raises(ValueError, match="registered twice"):

        @registry.register("alpha")
        class Other:
            pass


@pytest.mark.parametrize("kind", sorted(ALL_REGISTRIES))
def test_every_builtin_declares_forbidding_params(kind):
    registry = ALL_REGISTRIES[kind]
    assert registry.names(), f"no built-in {kind}"
    for entry in registry:
        params = entry.params_model
        assert issubclass(params, PluginParams), entry.name
        assert params.model_config.get("extra") == "forbid", entry.name
        assert entry.summary, f"{kind}/{entry.name} needs a docstring"
