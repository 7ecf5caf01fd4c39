"""Scores on synthetic images with known answers, the documented formula, the keep box, plug-in scorers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import structural_similarity

from lbw.domain.tune_rule import Score
from lbw.errors import RenderError
from lbw.render.scorers import GROUP, load_scorer, scorer_names
from lbw.render.scores import EPS, LabSsimScorer, as_score, keep_mask
from lbw.services.tune_cells import Scoring

SIZE = 48


def _image(seed: int, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR))


FULL, OFF = _image(1), _image(2)
KEEP = keep_mask("0.25,0.25,0.75,0.75", SIZE, SIZE)


def test_known_answers():
    scorer = LabSsimScorer()
    assert scorer.score(FULL, FULL, OFF, KEEP) == Score(1.0, 1.0)      # the full LoRA itself
    assert scorer.score(OFF, FULL, OFF, KEEP) == Score(0.0, 0.0)       # the LoRA off
    assert scorer.score(FULL, FULL, FULL, KEEP) == Score(1.0, 0.0)     # a LoRA that changes nothing
    assert scorer.distance(FULL, FULL.copy(), KEEP) == 0.0


def test_a_blend_keeps_more_effect_and_more_side_effect_as_it_nears_the_full_lora():
    scorer = LabSsimScorer()
    scores = []
    for t in (0.25, 0.5, 0.75):
        blend = np.clip(np.rint(t * FULL.astype(float) + (1 - t) * OFF.astype(float)), 0, 255).astype(np.uint8)
        scores.append(scorer.score(blend, FULL, OFF, KEEP))
    effects, sides = [s.effect for s in scores], [s.side for s in scores]
    assert effects == sorted(effects) and sides == sorted(sides)
    assert 0.0 < effects[0] < effects[-1] < 1.0 and 0.0 < sides[0] < sides[-1] < 1.0


def test_the_inside_of_the_full_lora_and_the_outside_of_the_lora_off_score_best():
    scorer = LabSsimScorer()
    good = OFF.copy()
    good[KEEP] = FULL[KEEP]
    bad = FULL.copy()
    bad[KEEP] = OFF[KEEP]
    best, worst = scorer.score(good, FULL, OFF, KEEP), scorer.score(bad, FULL, OFF, KEEP)
    assert best.effect > 0.5 > worst.effect and best.side < 0.5 < worst.side   # SSIM windows cross the box edge


def test_the_distance_is_the_documented_formula():
    mask = ~KEEP
    expected = (deltaE_ciede2000(rgb2lab(FULL), rgb2lab(OFF))[mask].mean() / 100
                + (1 - structural_similarity(FULL, OFF, data_range=255, channel_axis=2, gaussian_weights=True,
                                             sigma=1.5, use_sample_covariance=False, full=True)[1].mean(axis=2)[mask]
                   .mean()) / 2)
    assert LabSsimScorer().distance(FULL, OFF, mask) == pytest.approx(expected, rel=1e-12)
    assert LabSsimScorer().distance(FULL, OFF, np.zeros_like(mask)) == 0.0


def test_degenerate_references_and_bad_inputs():
    scorer = LabSsimScorer()
    inside_only = FULL.copy()   # the LoRA changes nothing outside: any candidate leaves no side effect there
    inside_only[~KEEP] = OFF[~KEEP]
    assert scorer.distance(inside_only, OFF, ~KEEP) > EPS  # SSIM windows see the box: a little outside change
    small = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(RenderError, match="too small"):
        scorer.distance(small, small + 1, np.ones((8, 8), bool))
    with pytest.raises(RenderError, match="keep mask"):
        scorer.score(FULL, FULL, OFF, KEEP.astype(np.uint8))
    with pytest.raises(RenderError, match="differ in size"):
        scorer.score(FULL, _image(3, 64), OFF, KEEP)


def test_keep_box_parsing_is_the_analyzers():
    assert int(keep_mask("0.25,0,0.75,0.5", 8, 8).sum()) == 16
    assert keep_mask("2,2,6,6", 8, 8)[2:6, 2:6].all() and int(keep_mask("2,2,6,6", 8, 8).sum()) == 16
    with pytest.raises(RenderError, match="covers the whole"):
        keep_mask("0,0,1,1", 8, 8)
    with pytest.raises(RenderError, match=r"keep box '0\.5,0\.5,0\.5,0\.9' is empty"):
        keep_mask("0.5,0.5,0.5,0.9", 8, 8)
    with pytest.raises(RenderError, match=r"keep box '0\.1,0\.2,0\.3': expected four numbers"):
        keep_mask("0.1,0.2,0.3", 8, 8)


def test_as_score_accepts_scores_pairs_and_refuses_the_rest():
    assert as_score((0.5, 2.0), "s") == Score(0.5, 2.0)
    assert as_score(Score(1.0, 0.0), "s") == Score(1.0, 0.0)
    for bad in ((1.5, 0.0), (0.5, -0.1), (float("nan"), 0.0), ("a", 1), 3.0, (1, 2, 3)):
        with pytest.raises(RenderError, match="scorer 'x'"):
            as_score(bad, "scorer 'x'")


PLUGIN = '''
import numpy as np

class HalfScorer:
    """A test scorer: effect kept 0.5, side effect = the share of the image outside the keep box."""

    def score(self, candidate, full, off, keep):
        return (0.5, float((~keep).mean()))


def make_constant():
    class Constant:
        name = "constant"

        def score(self, candidate, full, off, keep):
            return (1.0, 0.25)
    return Constant()


def broken():
    raise RuntimeError("no model weights here")
'''


@pytest.fixture()
def plugin(tmp_path, monkeypatch):
    """A real installed distribution (a dist-info folder on sys.path) declaring scorers in ``lbw.scorers``."""
    (tmp_path / "lbw_test_scorers.py").write_text(PLUGIN, encoding="utf-8")
    dist = tmp_path / "lbw_test_scorers-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lbw-test-scorers\nVersion: 1.0\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(
        f"[{GROUP}]\nhalf = lbw_test_scorers:HalfScorer\nconstant = lbw_test_scorers:make_constant\n"
        "broken = lbw_test_scorers:broken\nmissing = lbw_test_scorers:Nowhere\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_scorer_installed_through_an_entry_point_is_found_and_used(plugin, tmp_path):
    assert {"half", "constant", "broken", "missing", "lab-ssim"} <= set(scorer_names())
    half = load_scorer("half")
    assert half.name == "half" and half.score(FULL, FULL, OFF, KEEP) == (0.5, 0.75)
    assert load_scorer("constant").name == "constant"
    paths = {}
    for name, array in (("full", FULL), ("off", OFF), ("cand", _image(5))):
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(array).save(paths[name])
    scoring = Scoring(half, KEEP, {7: (paths["full"], paths["off"])})
    assert scoring.score(paths["cand"], 7) == Score(0.5, 0.75)
    assert scoring.summary({7: paths["cand"]}).score == Score(0.5, 0.75)


def test_plugin_failures_are_one_line_errors(plugin):
    with pytest.raises(RenderError, match=r"scorer 'broken' \(lbw_test_scorers:broken\) could not be loaded: "
                                          r"RuntimeError: no model weights here"):
        load_scorer("broken")
    with pytest.raises(RenderError, match=r"scorer 'missing'.*could not be loaded"):
        load_scorer("missing")
    with pytest.raises(RenderError, match=r"unknown scorer 'nope'; installed: .*half.*lab-ssim"):
        load_scorer("nope")


def test_the_builtin_scorer_is_found_without_installed_metadata():
    assert load_scorer().name == "lab-ssim" and isinstance(load_scorer("lab-ssim"), LabSsimScorer)
