"""Quantization configs: validation when built, dict round trips, the flags they declare, the checkpoint record."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest
from torch import nn

from cress_bitnet.quantization import (
    METHODS,
    BCQConfig,
    MinMaxConfig,
    QuantRecord,
    RecordError,
    SVCDConfig,
    config_from_dict,
    make_config,
)
from cress_bitnet.quantization.registry import generic_flags

# one non-default value per field, per method
NON_DEFAULT = {
    "svcd": {"num_groups": 2, "init": "signvalue", "act_quant": "seed"},
    "bitnet": {"num_groups": 3, "act_quant": "none", "act_bits": 6},
    "bitnet158": {"num_groups": 2, "act_quant": "none", "act_bits": 4},
    "bcq": {"bits": 3, "group_size": 16, "fit": "alternating", "rounds": 1},
    "tsvd": {"tolerance": 0.1, "cos_thresh": 0.5, "max_rank": 4, "steps": 5},
    "minmax": {"bits": 4, "weight_clip_init": 0.5, "act_clip_init": 2.0},
}


def test_every_method_is_covered() -> None:
    assert sorted(NON_DEFAULT) == sorted(METHODS)
    for name, values in NON_DEFAULT.items():
        assert sorted(values) == sorted(METHODS[name].config.field_names()), name


@pytest.mark.parametrize("method", sorted(NON_DEFAULT))
def test_to_dict_from_dict_round_trip(method: str) -> None:
    cfg = METHODS[method].config.build(**NON_DEFAULT[method])
    data = json.loads(json.dumps(cfg.to_dict()))  # through JSON, as in a checkpoint
    assert data["method"] == method
    back = config_from_dict(data)
    assert back == cfg and type(back) is type(cfg)
    assert back != METHODS[method].config()  # the values really travel
    assert config_from_dict({"method": method}) == METHODS[method].config()  # missing fields: defaults


@pytest.mark.parametrize(("cls", "options", "message"), [
    (SVCDConfig, {"init": "bogus"}, r"svcd: init must be one of \['constraint'"),
    (SVCDConfig, {"act_quant": "int4"}, "svcd: act_quant must be one of"),
    (SVCDConfig, {"num_groups": 0}, r"svcd: num_groups must be in \[1, None\], got 0"),
    (BCQConfig, {"bits": 5}, r"bcq: bits must be in \[1, 4\], got 5"),
    (BCQConfig, {"fit": "x"}, "bcq: fit must be one of"),
    (MinMaxConfig, {"bits": 17}, r"minmax: bits must be in \[2, 16\], got 17"),
    (MinMaxConfig, {"bits": "8"}, "minmax: bits must be a number"),
])
def test_invalid_values_fail_when_built(cls, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**options)
    with pytest.raises(ValueError, match=message):
        config_from_dict({"method": cls.method, **options})


def test_unknown_options_and_methods() -> None:
    with pytest.raises(TypeError, match=r"svcd \(SVCDConfig\) got unknown option\(s\) \['bits'\]"):
        SVCDConfig.build(bits=2)
    with pytest.raises(ValueError, match="unknown quantization method 'bitnet3'"):
        config_from_dict({"method": "bitnet3"})
    with pytest.raises(ValueError, match="needs a 'method' key"):
        config_from_dict({"bits": 2})
    assert SVCDConfig().replace(init="svd").init == "svd"
    with pytest.raises(ValueError, match="init must be one of"):
        SVCDConfig().replace(init="x")


def test_shape_checks_name_the_constraint() -> None:
    with pytest.raises(ValueError, match=r"num_groups must be in \[1, 4\]"):
        METHODS["svcd"].layer(8, 4, num_groups=5)
    with pytest.raises(ValueError, match="group_size must be a positive divisor of in_features=12"):
        METHODS["bcq"].layer(12, 4, group_size=5)


def test_generic_flags_come_from_the_fields() -> None:
    flags = generic_flags()
    assert sorted(flags) == ["quant_act", "quant_bits", "quant_groups", "quant_init"]
    assert flags["quant_bits"]["option"] == "bits" and flags["quant_bits"]["type"] is int
    assert "bcq 1-4" in flags["quant_bits"]["help"] and "minmax 2-16" in flags["quant_bits"]["help"]
    assert flags["quant_init"]["choices"] == list(SVCDConfig.__dataclass_fields__["init"].metadata["choices"])
    assert set(flags["quant_act"]["choices"]) == {"per_token", "seed", "none"}


def test_make_config_reports_options_the_method_lacks() -> None:
    cfg, ignored = make_config("bitnet", num_groups=2, init="signvalue", bits=None)
    assert cfg == METHODS["bitnet"].config(num_groups=2) and ignored == ["init"]


def test_record_round_trip_and_legacy_args() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    record = QuantRecord({"0": SVCDConfig(init="svd"), "2": BCQConfig(bits=3)})
    assert QuantRecord.from_json(record.to_json()) == record
    args = Namespace(quant_modules="[]")
    record.store(args)
    assert not hasattr(args, "quant_modules") and QuantRecord.from_args(args) == record
    assert record.apply(model) == ["0", "2"] and QuantRecord.of_model(model) == record
    legacy = Namespace(quant_method="bcq", quant_modules='["a", "b"]', quant_options='{"method": "alternating"}',
                       quant_plan='{"b": 3}', quant_packed=True)
    old = QuantRecord.from_args(legacy)
    assert old.packed and old.modules == {"a": BCQConfig(fit="alternating"), "b": BCQConfig(fit="alternating", bits=3)}
    with pytest.raises(RecordError, match="not in quant_modules"):
        QuantRecord.from_args(Namespace(quant_method="bcq", quant_modules='["a"]', quant_plan='{"c": 2}'))
    with pytest.raises(RecordError, match="module 0: svcd: init must be one of"):
        QuantRecord.from_json('{"version": 1, "modules": {"0": {"method": "svcd", "init": "x"}}}')
    with pytest.raises(RecordError, match="newer than this cress_bitnet"):
        QuantRecord.from_json('{"version": 9, "modules": {}}')
    with pytest.raises(RecordError, match="not valid JSON"):
        QuantRecord.from_json("{")
    assert QuantRecord.from_args(Namespace()) is None
