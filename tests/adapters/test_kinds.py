"""Role classification, factor roles, rank and alpha/rank rules (stdlib-only module)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lbw.adapters.kinds import AdapterKind, alpha_scale, kind_of_roles, rank_of, scaled_roles
from lbw.errors import AdapterError


@pytest.mark.parametrize(
    ("roles", "kind"),
    [
        ({"lora_up", "lora_down"}, AdapterKind.LORA),
        ({"lora_up", "lora_down", "lora_mid", "alpha"}, AdapterKind.LORA),
        ({"lora_up", "lora_down", "alpha", "dora_scale"}, AdapterKind.DORA),
        ({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}, AdapterKind.LOHA),
        ({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"}, AdapterKind.LOHA),
        ({"lokr_w1", "lokr_w2"}, AdapterKind.LOKR),
        ({"lokr_w1_a", "lokr_w1_b", "lokr_t2", "lokr_w2_a", "lokr_w2_b", "alpha"}, AdapterKind.LOKR),
        ({"weight", "on_input"}, AdapterKind.IA3),
        ({"diff", "diff_b"}, AdapterKind.FULL),
        ({"w_norm"}, AdapterKind.NORM),
    ],
)
def test_kind_of_roles(roles, kind):
    assert kind_of_roles(roles) is kind


@pytest.mark.parametrize(
    ("roles", "message"),
    [
        ({"lora_up", "alpha"}, "lora module is missing role lora_down (has ['alpha', 'lora_up'])"),
        ({"lora_down", "dora_scale"}, "dora module is missing role lora_up"),
        ({"hada_w1_a", "hada_w1_b", "hada_w2_a"}, "loha module is missing role hada_w2_b"),
        ({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1"}, "only one of hada_t1/hada_t2"),
        ({"lokr_w1_a", "lokr_w2"},
         "lokr module is missing role lokr_w1_b (needs lokr_w1 or lokr_w1_a + lokr_w1_b)"),
        ({"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2"},
         "lokr module has both lokr_w1 and lokr_w1_a/lokr_w1_b"),
        ({"lokr_w1", "lokr_w2", "lokr_t2"}, "lokr_t2 with a full lokr_w2"),
        ({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "dora_scale"},
         "loha module has unexpected roles ['dora_scale'] (DoRA is supported on LoRA only)"),
        ({"lora_up", "lora_down", "scale"}, "lora module has unexpected roles ['scale']"),
        ({"dora_scale"}, "DoRA is supported on LoRA only"),
        ({"oft_blocks", "alpha"}, "unknown adapter roles ['alpha', 'oft_blocks']"),
    ],
)
def test_bad_role_sets_are_refused_with_the_role_named(roles, message):
    with pytest.raises(AdapterError) as info:
        kind_of_roles(roles)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        ({"lora_up", "lora_down", "alpha"}, ("lora_up",)),
        ({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}, ("hada_w1_a",)),
        ({"lokr_w1", "lokr_w2_a", "lokr_w2_b"}, ("lokr_w1",)),
        ({"lokr_w1_a", "lokr_w1_b", "lokr_w2"}, ("lokr_w1_a",)),
        ({"weight"}, ("weight",)),
        ({"diff"}, ("diff",)),
        ({"diff", "diff_b"}, ("diff", "diff_b")),
        ({"w_norm", "b_norm"}, ("w_norm", "b_norm")),
    ],
)
def test_scaled_roles(roles, expected):
    assert scaled_roles(roles) == expected


def test_rank_and_scale_rules():
    lora = {"lora_up": (320, 8), "lora_down": (8, 320), "alpha": ()}
    assert rank_of(lora) == 8
    assert alpha_scale(lora, 4.0) == 0.5
    assert alpha_scale(lora, None) == 1.0  # missing alpha = rank
    assert alpha_scale(lora, 0.0) == 0.0  # literal, as A1111
    tucker = {"lora_up": (64, 4, 1, 1), "lora_mid": (4, 3, 3, 3), "lora_down": (3, 32, 1, 1)}
    assert rank_of(tucker) == 3  # rows of lora_down, as A1111 and ComfyUI
    loha = {"hada_w1_a": (64, 4), "hada_w1_b": (4, 32), "hada_w2_a": (64, 6), "hada_w2_b": (6, 32)}
    assert rank_of(loha) == 4
    assert alpha_scale(loha, 2.0) == 0.5
    assert rank_of({"lokr_w1": (4, 4), "lokr_w2": (8, 8)}) is None
    assert alpha_scale({"lokr_w1": (4, 4), "lokr_w2": (8, 8), "alpha": ()}, 8.0) == 1.0
    assert rank_of({"lokr_w1_a": (4, 2), "lokr_w1_b": (2, 4), "lokr_w2_a": (8, 3), "lokr_w2_b": (3, 8)}) == 2
    assert rank_of({"lokr_w1": (4, 4), "lokr_w2_a": (8, 3), "lokr_w2_b": (3, 8)}) == 3
    assert rank_of({"weight": (64,)}) is None
    assert alpha_scale({"diff": (4, 4)}, None) == 1.0


def test_non_finite_alpha_is_refused():
    with pytest.raises(AdapterError, match="alpha must be a finite number, found nan"):
        alpha_scale({"lora_up": (4, 2), "lora_down": (2, 4)}, float("nan"))


def test_kinds_module_does_not_import_torch():
    code = "import sys, lbw.adapters.kinds, lbw.adapters; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
