"""The registry contract: listing, describe, errors, registration rules, and check_scheme."""

import numpy as np
import pytest

import odezoo
from odezoo import _registry
from odezoo.testing import check_scheme, convergence_slope

DESCRIBE_KEYS = {"name", "kind", "family", "scheme", "order", "paper", "ode_reading", "defaults", "weights"}


@pytest.fixture
def scoped():
    """What a test registers is removed from the global registry afterwards (odezoo.scoped_registry)."""
    with odezoo.scoped_registry():
        yield


# --------------------------------------------------------------------------- listing and describe
def test_list_models_is_sorted_and_filters_by_fnmatch():
    names = odezoo.list_models()
    assert names == sorted(names) and len(names) == len(set(names))
    assert {"resnet", "polynet", "fractalnet", "revnet", "lm_resnet"} <= set(names)
    resnets = odezoo.list_models("resnet*")
    assert resnets == sorted(resnets)
    assert "resnet" in resnets and "resnet20" in resnets
    assert "lm_resnet" not in resnets  # fnmatch anchors at both ends
    assert odezoo.list_models("*resnet56") == ["lm_resnet56", "resnet56"]
    assert odezoo.list_models("no_such_*") == []


def test_list_schemes_is_sorted():
    names = odezoo.list_schemes()
    assert names == sorted(names) and len(names) == len(set(names))
    assert {"euler", "heun", "rk4"} <= set(names)


@pytest.mark.parametrize("name", ["resnet", "lm_resnet56"])
def test_describe_has_exactly_the_documented_keys(name):
    info = odezoo.describe(name)
    assert set(info) == DESCRIBE_KEYS
    assert info["name"] == name
    assert info["kind"] == "classifier"
    assert isinstance(info["weights"], list)
    assert isinstance(info["defaults"], dict)


def test_describe_reads_the_scheme_and_its_order():
    info = odezoo.describe("resnet")
    assert (info["family"], info["scheme"], info["order"]) == ("resnet", "euler", 1)
    assert "Euler" in info["ode_reading"] and "He" in info["paper"]
    assert odezoo.describe("lm_resnet56")["defaults"]["depth"] == 56  # the alias's preset applies


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "call, name, suggestion, valid",
    [
        (lambda: odezoo.build("resnte"), "resnte", "resnet", odezoo.list_models),
        (lambda: odezoo.describe("lm_resnet57"), "lm_resnet57", "lm_resnet56", odezoo.list_models),
        (lambda: odezoo.get_scheme("rk5"), "rk5", "rk4", odezoo.list_schemes),
    ],
)
def test_unknown_name_quotes_it_suggests_and_lists(call, name, suggestion, valid):
    with pytest.raises(odezoo.UnknownNameError) as info:
        call()
    err = info.value
    assert isinstance(err, LookupError) and isinstance(err, odezoo.OdezooError)
    message = str(err)
    assert repr(name) in message
    hint = message.split("Did you mean ")[1].split("?")[0]
    assert repr(suggestion) in hint
    assert err.choices == valid()
    assert all(v in message.split("Valid ")[1] for v in valid())  # every valid name is listed


def test_unknown_name_with_nothing_close_still_lists_the_valid_names():
    with pytest.raises(LookupError, match="Valid schemes: .*euler.*rk4"):
        odezoo.get_scheme("zzzzzz")


def test_misspelled_config_key_is_a_type_error_naming_valid_keys():
    with pytest.raises(TypeError) as info:
        odezoo.build("resnet", depht=20)
    message = str(info.value)
    assert "'depht'" in message and "did you mean 'depth'" in message
    assert "Valid keys:" in message
    for key in ("depth", "num_classes", "input_shape", "scheme"):
        assert key in message.split("Valid keys:")[1]


def test_scheme_options_are_valid_config_keys_of_a_family():
    # resnet passes **scheme_options through; a misspelled option of the chosen scheme is caught too
    with pytest.raises(TypeError, match="'p_l'.*did you mean 'p_L'"):
        odezoo.build("resnet", scheme="linear_multistep", p_l=0.8)


@pytest.mark.parametrize(
    "config, shown",
    [({"depth": 7}, "depth=7"), ({"width": 0}, "width=0"), ({"input_shape": (32, 32)}, "input_shape=(32, 32)")],
)
def test_out_of_range_value_is_a_value_error_quoting_it(config, shown):
    with pytest.raises(ValueError) as info:
        odezoo.build("resnet", **config)
    message = str(info.value)
    assert shown in message and "Allowed" in message


def test_build_takes_config_by_keyword_only():
    with pytest.raises(TypeError):
        odezoo.build("resnet", False, 20)  # noqa


# --------------------------------------------------------------------------- registration rules
def _toy_scheme(order=1):
    class Toy(odezoo.Scheme):
        num_fields = 1

        def step(self, fields, t, y, h):
            return y + h * fields[0](t, y)

    Toy.order = order
    return Toy


def test_registering_a_taken_name_with_another_object_names_both(scoped):
    first, second = _toy_scheme(), _toy_scheme()
    first.__qualname__, second.__qualname__ = "FirstToy", "SecondToy"
    odezoo.register_scheme("test_clash")(first)
    with pytest.raises(odezoo.PluginError) as info:
        odezoo.register_scheme("test_clash")(second)
    message = str(info.value)
    assert "'test_clash'" in message and "FirstToy" in message and "SecondToy" in message
    assert odezoo.get_scheme("test_clash") is first  # the first registration stands


def test_registering_a_builtin_name_names_its_plugin():
    with pytest.raises(odezoo.PluginError, match=r"plugin 'euler'"):
        odezoo.register_scheme("euler")(_toy_scheme())
    assert odezoo.get_scheme("euler").__module__.endswith("euler")


def test_registering_the_same_object_again_is_a_no_op(scoped):
    toy = _toy_scheme()
    assert odezoo.register_scheme("test_again")(toy) is toy
    assert odezoo.register_scheme("test_again")(toy) is toy
    assert odezoo.list_schemes().count("test_again") == 1

    def builder(**config):
        return None

    kwargs = dict(kind="classifier", family="test", paper="-", ode_reading="-")
    odezoo.register_model("test_model_again", **kwargs)(builder)
    odezoo.register_model("test_model_again", **kwargs)(builder)
    assert odezoo.list_models("test_model_*") == ["test_model_again"]


def test_owners_are_told_apart_by_identity_not_by_plugin_name(scoped):
    # a third party may name its plugin like a built-in one; the clash message must show both sources
    first_cls, second_cls = _toy_scheme(), _toy_scheme()
    first = _registry.PluginRecord("twin", "entry point pkg_a (dist-a 1.0)")
    second = _registry.PluginRecord("twin", "entry point pkg_b (dist-b 1.0)")
    with _registry._loading(first):
        odezoo.register_scheme("test_twin")(first_cls)
    with _registry._loading(second), pytest.raises(odezoo.PluginError) as info:
        odezoo.register_scheme("test_twin")(second_cls)
    message = str(info.value)
    assert "already registered by plugin 'twin' (entry point pkg_a (dist-a 1.0))" in message
    assert "plugin 'twin' (entry point pkg_b (dist-b 1.0)) tried" in message
    second.schemes.append("test_twin")  # even a record listing the name cannot roll back the owner's entry
    _registry._unregister(second)
    assert odezoo.get_scheme("test_twin") is first_cls
    _registry._unregister(first)
    assert "test_twin" not in odezoo.list_schemes()


def test_model_name_clash_is_a_plugin_error(scoped):
    kwargs = dict(kind="classifier", family="test", paper="-", ode_reading="-")
    with pytest.raises(odezoo.PluginError, match="'resnet'.*plugin 'families'"):
        odezoo.register_model("resnet", **kwargs)(lambda **config: None)


@pytest.mark.parametrize(
    "bad, why",
    [
        ({"order": 0}, "order"),
        ({"num_fields": "2"}, "num_fields"),
        ({"state_size": 3}, "state_size"),
    ],
)
def test_a_scheme_must_declare_its_contract(bad, why, scoped):
    cls = type("BadDecl", (_toy_scheme(),), bad)
    with pytest.raises(odezoo.PluginError, match=why):
        odezoo.register_scheme("test_bad_decl")(cls)
    assert "test_bad_decl" not in odezoo.list_schemes()


def test_register_scheme_rejects_non_schemes_and_bad_names():
    with pytest.raises(TypeError, match="subclass of odezoo.Scheme"):
        odezoo.register_scheme("test_not_a_scheme")(object)
    with pytest.raises(ValueError, match="snake_case"):
        odezoo.register_scheme("Bad-Name")


@pytest.mark.parametrize(
    "A, b, match",
    [
        ([[], [1.0]], [0.5, 0.4], "sum to"),  # inconsistent weights
        ([[0.0, 1.0], [1.0]], [0.5, 0.5], "strictly lower triangular"),  # implicit
        ([[], [1.0], [0.5, 0.5]], [0.5, 0.5], "rows"),  # A and b disagree on the stage count
    ],
)
def test_explicit_runge_kutta_rejects_a_bad_tableau(A, b, match):
    with pytest.raises(odezoo.PluginError, match=match):
        type("BadTableau", (odezoo.ExplicitRungeKutta,), {"order": 2, "A": A, "b": b})


def test_explicit_runge_kutta_from_a_tableau_defaults_c_and_num_fields():
    cls = type("Ralston", (odezoo.ExplicitRungeKutta,), {"order": 2, "A": [[], [2 / 3]], "b": [1 / 4, 3 / 4]})
    assert cls.num_fields == 2
    assert abs(check_scheme(cls, network=False)["slope"] - 2) < 0.3


# --------------------------------------------------------------------------- check_scheme
class SSPRK3(odezoo.Scheme):
    """Shu-Osher SSPRK3, written out: stages at t, t + h, t + h/2."""

    order, num_fields = 3, 3

    def step(self, fields, t, y, h):
        k1 = fields[0](t, y)
        k2 = fields[1](t + h, y + h * k1)
        k3 = fields[2](t + 0.5 * h, y + 0.25 * h * (k1 + k2))
        return y + h * (k1 + k2 + 4.0 * k3) / 6.0


class WrongTimeSSPRK3(SSPRK3):
    """SSPRK3 with the third stage evaluated at t + h instead of t + h/2.

    On y' = Ay + b·cos t the third stage's forcing is then off by
    b(cos(t + h) − cos(t + h/2)) = O(h), weighted by 4h/6: an O(h²) local error,
    so the global error falls only like h¹ (a time-independent field would hide it).
    """

    def step(self, fields, t, y, h):
        k1 = fields[0](t, y)
        k2 = fields[1](t + h, y + h * k1)
        k3 = fields[2](t + h, y + 0.25 * h * (k1 + k2))
        return y + h * (k1 + k2 + 4.0 * k3) / 6.0


class SkipsAField(SSPRK3):
    """Declares three fields but evaluates only the first."""

    def step(self, fields, t, y, h):
        f = fields[0]
        k1 = f(t, y)
        k2 = f(t + h, y + h * k1)
        k3 = f(t + 0.5 * h, y + 0.25 * h * (k1 + k2))
        return y + h * (k1 + k2 + 4.0 * k3) / 6.0


def test_check_scheme_passes_a_correct_third_order_scheme():
    result = check_scheme(SSPRK3, network=False)
    assert abs(result["slope"] - 3.0) < 0.1
    assert result["order"] == 3 and result["network"] is None


def test_check_scheme_fails_wrong_stage_times():
    slope, _ = convergence_slope(WrongTimeSSPRK3)
    assert abs(slope - 1.0) < 0.2  # the slope really drops to one
    with pytest.raises(AssertionError, match="declares order 3 but its measured convergence slope is 1"):
        check_scheme(WrongTimeSSPRK3, network=False)


def test_check_scheme_fails_a_scheme_that_ignores_declared_fields():
    with pytest.raises(AssertionError, match=r"never called field\(s\) \[1, 2\]"):
        check_scheme(SkipsAField, network=False)


def test_check_scheme_builds_and_round_trips_a_network_block(scoped):
    odezoo.register_scheme("test_ssprk3")(SSPRK3)
    result = check_scheme("test_ssprk3")
    assert result["network"] == "ok"


# -- fixes found in review --------------------------------------------------------
def test_a_registered_class_cannot_take_a_second_name():
    euler = odezoo.get_scheme("euler")
    with pytest.raises(odezoo.PluginError, match=r"already registered as 'euler'.*subclass"):
        odezoo.register_scheme("test_euler_again")(euler)
    assert euler.name == "euler" and "test_euler_again" not in odezoo.list_schemes()


def test_convergence_slope_explains_a_problem_solved_below_round_off():
    from odezoo.testing import convergence_slope

    class Exact(odezoo.Scheme):
        order, num_fields = 1, 1

        def step(self, fields, t, y, h):
            return y  # y' = 0 below is solved exactly

        def test_problem(self):
            return {
                "fields": [lambda t, y: 0 * y],
                "y0": np.array([1.0]),
                "t0": 0.0,
                "t1": 1.0,
                "exact": lambda t: np.array([1.0]),
            }

    with pytest.raises(AssertionError, match="below round-off"):
        convergence_slope(Exact())


def test_unregistered_subclass_is_not_network_checked_under_its_parents_name():
    rk4 = odezoo.get_scheme("rk4")

    class MyRK4(rk4):
        pass

    assert odezoo.testing.check_scheme(MyRK4)["network"].startswith("skipped")


# --------------------------------------------------------------------------- scoped_registry
def test_scoped_registry_removes_what_was_registered_inside_and_keeps_the_rest():
    schemes, models = odezoo.list_schemes(), odezoo.list_models()
    toy = _toy_scheme()
    with odezoo.scoped_registry():
        odezoo.register_scheme("test_scoped")(toy)
        with odezoo.scoped_registry():  # scopes nest
            odezoo.register_model(
                "test_scoped_model",
                kind="classifier",
                family="test",
                paper="-",
                ode_reading="-",
                aliases={"test_scoped_model8": {}},
            )(lambda **config: None)
            assert {"test_scoped_model", "test_scoped_model8"} <= set(odezoo.list_models())
        assert "test_scoped_model" not in odezoo.list_models() and "test_scoped_model8" not in odezoo.list_models()
        assert odezoo.get_scheme("test_scoped") is toy and toy.name == "test_scoped"
    assert (odezoo.list_schemes(), odezoo.list_models()) == (schemes, models)
    assert toy.name is None
    with odezoo.scoped_registry():
        assert odezoo.register_scheme("test_scoped")(toy) is toy  # the name is free again
    assert "test_scoped" not in odezoo.list_schemes()
