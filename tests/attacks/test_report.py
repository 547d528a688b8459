"""The audit report: report.md, a self-contained report.html (rendered in headless Chromium) and figures/.

One tiny audit grid (2 tasks x 3 defences, 2 rounds, ~15 s) is run through the real harness once per module;
the other tests rewrite its results (names, seeds, switched-off attacks) and report them again.
"""

from __future__ import annotations

import base64
import copy
import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from matplotlib import image as mpimg

from attacks.harness import (
    AttackSettings,
    AuditConfig,
    DefenceSpec,
    TaskSpec,
    default_audit_config,
    expected_orderings,
    run_audit,
)
from attacks.report import _image_shape, write_reports

pytestmark = pytest.mark.slow

DEFENCES = ("none", "SecAgg", "central DP eps=1")
MARKS = {True: "✓", False: "✗", None: "–"}


def _tiny_audit() -> AuditConfig:
    tasks = tuple(
        TaskSpec(t.name, t.config.replace(data={"num_clients": 10},
                                          run={"rounds": 2, "eval_every": 2, "checkpoint_every": 2,
                                               "centralized_epochs": 5}))
        for t in default_audit_config().tasks
    )
    defences = (
        DefenceSpec("none"),
        DefenceSpec("SecAgg", {"run": {"aggregation": "secagg"}}),
        DefenceSpec("central DP eps=1", {"dp": {"mode": "central", "target_epsilon": 1.0, "clip": 0.5}}),
    )
    attacks = AttackSettings(inversion_clients=2, inversion_restarts=1, canary_count=100, canary_dim=50)
    return AuditConfig(tasks, defences, (0,), attacks)


@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("audit")
    return run_audit(_tiny_audit(), out, progress=False), out  # run_audit writes the reports itself


def _rename(results: dict[str, Any], task: tuple[str, str], defence: tuple[str, str]) -> dict[str, Any]:
    renamed = copy.deepcopy(results)
    for record in renamed["cells"] + renamed["baselines"]:
        record["task"] = task[1] if record["task"] == task[0] else record["task"]
    for cell in renamed["cells"]:
        cell["defence"] = defence[1] if cell["defence"] == defence[0] else cell["defence"]
    for entry, (old, new) in [(e, task) for e in renamed["audit_config"]["tasks"]] + [
            (e, defence) for e in renamed["audit_config"]["defences"]]:
        entry["name"] = new if entry["name"] == old else entry["name"]
    renamed["checks"] = expected_orderings(renamed)
    return renamed


class _Page(HTMLParser):
    """Every tag and attribute of a page, to check what it would load."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for t, attrs in self.tags if t == tag]


# --------------------------------------------------------------------------------------------
# report.md and figures/
# --------------------------------------------------------------------------------------------


def test_markdown_names_every_task_defence_and_check(audit: tuple[dict[str, Any], Path]) -> None:
    results, out = audit
    md = (out / "report.md").read_text(encoding="utf-8")
    for heading in ("## What was run", "## Results: hospitals", "## Results: digits", "## Expected orderings",
                    "## How to read this", "## Figures"):
        assert heading in md
    for defence in DEFENCES:
        assert f"| {defence} |" in md
    assert results["checks"]
    for check in results["checks"]:
        assert f"- {MARKS[check['holds']]} **{check['task']}**: {check['claim']}" in md
    assert "∞ (none)" in md and "hidden (masked)" in md and "Prior guess" in md
    links = re.findall(r"\]\((figures/[^)]+)\)", md)
    assert links and all((out / link).is_file() for link in links)


def test_figures_are_written_with_the_numbers_they_plot(audit: tuple[dict[str, Any], Path]) -> None:
    results, out = audit
    figures = out / "figures"
    stems = {p.stem for p in figures.glob("*.png")}
    assert {"privacy_utility", "leakage", "roc"} <= stems
    assert any(s.startswith("inversion_") and "digits" in s for s in stems)  # the image task only
    for stem in stems:
        json.loads((figures / f"{stem}.json").read_text(encoding="utf-8"))
        assert mpimg.imread(figures / f"{stem}.png").std() > 0
    plotted = json.loads((figures / "privacy_utility.json").read_text(encoding="utf-8"))
    for task in plotted["tasks"]:
        (point,) = task["points"]  # the one DP defence of the grid
        cell = next(c for c in results["cells"]
                    if c["task"] == task["task"] and c["defence"] == point["defence"])
        assert point["epsilon"] == cell["privacy"]["epsilon"]
        assert point["accuracy"] == cell["utility"]["test_accuracy"]


def test_mean_over_seeds(audit: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    results, _ = audit
    two = copy.deepcopy(results)
    for cell in results["cells"]:
        again = copy.deepcopy(cell) | {"seed": 1}
        again["utility"]["test_accuracy"] = cell["utility"]["test_accuracy"] / 2
        two["cells"].append(again)
    two["baselines"] += [b | {"seed": 1} for b in results["baselines"]]
    two["seeds"] = two["audit_config"]["seeds"] = [0, 1]
    write_reports(two, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    none = next(c for c in results["cells"] if c["task"] == "hospitals" and c["defence"] == "none")
    assert "Mean over 2 seeds." in md and "## Warnings" not in md
    assert f"| none | {0.75 * none['utility']['test_accuracy']:.3f} |" in md


def test_duplicate_and_missing_records_are_reported(audit: tuple[dict[str, Any], Path],
                                                    tmp_path: Path) -> None:
    results, _ = audit
    broken = copy.deepcopy(results)
    secagg = next(c for c in broken["cells"] if c["task"] == "digits" and c["defence"] == "SecAgg")
    dp = next(c for c in broken["cells"] if c["task"] == "digits" and c["defence"] == "central DP eps=1")
    broken["cells"].remove(dp)
    broken["cells"].append(copy.deepcopy(secagg))
    write_reports(broken, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Warnings" in md
    assert "2 records for task “digits”, defence “SecAgg”, seed 0" in md
    assert "no record for task “digits”, defence “central DP eps=1”, seed 0" in md


def test_report_without_attacks_leaves_their_columns_and_figures_out(audit: tuple[dict[str, Any], Path],
                                                                     tmp_path: Path) -> None:
    results, _ = audit
    bare = copy.deepcopy(results)
    for cell in bare["cells"]:
        for key in ("inversion", "membership", "audit"):
            cell.pop(key, None)
    bare["checks"] = expected_orderings(bare)
    write_reports(bare, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "MIA" not in md and "Inversion" not in md and "audit ε lower bound |" not in md
    assert {p.stem for p in (tmp_path / "figures").glob("*.png")} == {"privacy_utility"}


def test_image_shape_is_inferred_in_channel_height_width_order() -> None:
    assert _image_shape(64, "digits") == (1, 8, 8)
    assert _image_shape(3 * 32 * 32, "cifar10") == (3, 32, 32)
    assert _image_shape(3 * 32 * 32, "") == (3, 32, 32)
    assert _image_shape(28 * 28, "") == (1, 28, 28)
    assert _image_shape(30, "breast_cancer") is None


# --------------------------------------------------------------------------------------------
# report.html
# --------------------------------------------------------------------------------------------


def test_html_is_one_self_contained_file(audit: tuple[dict[str, Any], Path]) -> None:
    _, out = audit
    text = (out / "report.html").read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    # nothing to fetch: every src/href is a data URI or an in-page anchor, no stylesheet or script file
    links = [v for _, attrs in page.tags for k, v in attrs.items() if k in ("src", "href")]
    assert all(v is not None and (v.startswith("data:") or v.startswith("#")) for v in links)
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//", text, re.IGNORECASE)
    assert "@import" not in text and "url(" not in text and not page.all("link")
    assert all("src" not in s for s in page.all("script"))
    tables = page.all("table")
    assert len(tables) == 4 and len(page.all("thead")) == len(tables)  # 2 describing the run, 1 per task
    images = page.all("img")
    assert len(images) == len(list((out / "figures").glob("*.png")))
    for img in images:
        src = img["src"] or ""
        assert src.startswith("data:image/png;base64,") and img.get("alt")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")


def test_names_from_config_files_are_escaped(audit: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    results, _ = audit
    defence = '<b>x</b> $\\frac$ & "q"'  # also mathtext that matplotlib would choke on if not escaped
    task = "<script>alert(1)</script>"
    write_reports(_rename(results, ("digits", task), ("SecAgg", defence)), tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert html.escape(defence) in page and html.escape(task) in page
    assert "<b>x</b>" not in page and "<script>alert" not in page
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "&lt;b&gt;x&lt;/b&gt;" in md and "<b>" not in md and "<script>" not in md
    assert (tmp_path / "figures" / "inversion_1_scriptalert1script.png").is_file()


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed; `make test` installs it (apt-get install -y chromium)")


def _headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # root needs --no-sandbox; a fresh profile keeps runs independent of each other and of the user's browser
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_html_renders_in_headless_chromium(audit: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    browser = _chromium()
    _, out = audit
    url = (out / "report.html").resolve().as_uri()
    dom = _headless(browser, tmp_path / "dom", "--virtual-time-budget=5000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stdout[:2000]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    assert int(attrs["data-images-total"]) > 0  # set by the page's script on load, so the script ran
    assert attrs["data-images-loaded"] == attrs["data-images-total"]
    assert int(attrs["data-tables"]) == 4

    artifacts = Path(os.environ.get("FEDSHIELD_ARTIFACTS", "runs/test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = (artifacts / "audit_report.png").resolve()
    shot.unlink(missing_ok=True)
    run = _headless(browser, tmp_path / "shot", "--hide-scrollbars", "--window-size=1400,3000",
                    f"--screenshot={shot}", url)
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert mpimg.imread(shot)[..., :3].std() > 0  # not a blank page
