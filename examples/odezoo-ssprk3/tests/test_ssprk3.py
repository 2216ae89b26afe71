"""The plugin's own test: odezoo's conformance kit on the installed scheme."""

import odezoo
import odezoo.testing


def test_ssprk3_is_discovered():
    assert "ssprk3" in odezoo.list_schemes()
    loaded = {rec["name"]: rec for rec in odezoo.plugin_report()["loaded"]}
    assert loaded["ssprk3"]["schemes"] == ["ssprk3"]


def test_ssprk3_conforms():
    result = odezoo.testing.check_scheme("ssprk3")  # order 3, fields, a Keras block, a .keras round trip
    assert abs(result["slope"] - 3) < 0.3
    assert result["network"] == "ok"
