"""The README, executed: its main command and its stage-by-stage path run as a new user runs
them -- the installed `worldclip` console script in a subprocess, from a fresh empty working
directory, with the default relative `storage.root` and no absolute path anywhere. Only
overrides that shrink sizes are added, so the runs fit a 2-core machine.

Round one's suite was green while `make demo` failed on a fresh clone: every test passed an
absolute storage.root, and a Ray Train worker's cwd is not the driver's
(docs/architecture.md, "Paths").
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORLDCLIP = Path(sys.executable).parent / "worldclip"
# Sizes only: the demo's world, model and schedule, shrunk.
SHRINK = ["world.pairs=900", "world.pairs_per_shard=300", "world.concepts=30",
          "world.eval_per_concept=2", "train.max_steps=6", "train.batch_size_per_worker=16",
          "train.checkpoint_every=3", "train.log_every=2", "train.tokenizer_vocab=1000",
          "train.eval_every=3", "train.warmup_steps=2"]


def user_env() -> dict[str, str]:
    """The environment `make demo` gives the command (Makefile TEST_ENV), without anything a
    test session set up for itself (S3 endpoint, credentials, a Ray address)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "RAY_ADDRESS", "PYTEST_"))}
    env.update(RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    return env


def run_cli(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    assert WORLDCLIP.exists(), f"console script {WORLDCLIP} is not installed"
    proc = subprocess.run([str(WORLDCLIP), *args], cwd=cwd, env=user_env(), text=True,
                          capture_output=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"`worldclip {shlex.join(args)}` in {cwd} exited {proc.returncode}\n"
        f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}")
    return proc


def makefile_demo_args() -> list[str]:
    """The arguments `make demo` passes to the console script (README's main command)."""
    text = (REPO / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.M)
    assert recipe, "Makefile has no demo target"
    line = next(ln for ln in recipe.group(1).splitlines() if "worldclip" in ln)
    return shlex.split(line.split("/worldclip", 1)[1])


def readme_stage_commands() -> list[list[str]]:
    """The first ```bash block of README's "Stages" section: one worldclip command a line."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Stages", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    cmds = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            words = shlex.split(line)
            assert words[0] == "worldclip", line
            cmds.append(words[1:])
    return cmds


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs).get("src") or "")


def html_image_sources(page: str) -> list[str]:
    p = _Images()
    p.feed(page)
    return p.srcs


def test_readme_names_the_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert makefile_demo_args()[0] == "demo"
    assert [c[0] for c in readme_stage_commands()] == [
        "world", "curate", "rebalance", "train", "export", "eval"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
    code = "\n".join(ln.split("#", 1)[0] for ln in ci.splitlines())
    # CI stops only what it started: never every Ray or every moto on the machine
    assert "ray stop" not in code and "pkill" not in code and "killall" not in code


def test_html_image_parser_sees_every_image() -> None:
    from worldclip.pipelines.demo import render_html

    page = render_html("# r\n\n![languages](plots/languages.png) ![long tail](plots/long_tail.png)"
                       "\n\n| a | b |\n|---|---:|\n| x | 1 |\n")
    assert html_image_sources(page) == ["plots/languages.png", "plots/long_tail.png"]
    assert "<table>" in page and "<td>x</td>" in page


@pytest.mark.slow
def test_readme_main_command_from_a_fresh_directory(tmp_path: Path) -> None:
    """`make demo`'s command, default config (relative storage.root), sizes shrunk."""
    cwd = tmp_path / "fresh"
    cwd.mkdir()
    proc = run_cli([*makefile_demo_args(), *SHRINK], cwd)
    out = cwd / "worldclip-data" / "demo"
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert Path(result["report"]) == out / "report.md"
    report = json.loads((out / "report.json").read_text())
    a = report["curation"]
    assert a["pairs_in"] == 900 == a["kept"] + sum(a["dropped"].values())
    assert report["train"]["steps"] == 6
    # the saved config shows the absolute form of the relative default
    saved = (out / "config.yaml").read_text()
    assert f"root: {cwd / 'worldclip-data'}" in saved
    # every image of the HTML report exists next to it
    page = (out / "report.html").read_text()
    srcs = html_image_sources(page)
    assert len(srcs) >= 4
    for src in srcs:
        assert (out / src.replace("%20", " ")).is_file(), f"report.html shows missing {src}"
    # the curation table: every row adds up, units named
    md = (out / "report.md").read_text()
    assert "pairs in = not matched + matched" in md
    card = json.loads((cwd / "worldclip-data" / "curated" / "balanced" /
                       "datacard.json").read_text())
    for g, row in card["languages"].items():
        assert row["matched"] <= row["pairs_in"], (g, row)
        assert row["kept"] <= row["matched"], (g, row)
    assert sum(r["kept"] for r in card["languages"].values()) == a["kept"]
    assert sum(r["kept_by_caption"] for r in card["languages"].values()) == a["kept"]
    assert not list(tmp_path.glob("*.tar")), "nothing written outside the working directory"


@pytest.mark.slow
def test_readme_stages_from_a_fresh_directory(tmp_path: Path) -> None:
    """world -> curate -> rebalance -> train -> export -> eval, exactly as README lists them,
    then the export is used the way most people use a CLIP checkpoint: transformers'
    AutoProcessor and zero-shot pipeline, agreeing with `worldclip eval`."""
    cwd = tmp_path / "fresh"
    cwd.mkdir()
    outputs = {}
    for args in readme_stage_commands():
        outputs[args[0]] = run_cli([*args, *SHRINK], cwd)
    data = cwd / "worldclip-data"
    assert list((data / "world" / "raw" / "wds").glob("*.tar"))
    assert (data / "curated" / "balanced" / "datacard.json").is_file()
    assert (data / "curated" / "p0.1" / "datacard.json").is_file()
    export = data / "runs" / "worldclip" / "export"
    assert (export / "config.json").is_file() and (export / "processor_config.json").is_file()
    metrics = json.loads((data / "eval" / "metrics.json").read_text())
    assert metrics["checkpoint"].startswith(str(data))

    # The export is a complete HF directory: AutoProcessor and the pipeline load it.
    from transformers import AutoProcessor, MetaClip2Model, pipeline

    processor = AutoProcessor.from_pretrained(export)
    assert processor.image_processor.crop_size["height"] == \
        MetaClip2Model.from_pretrained(export).config.vision_config.image_size

    # worldclip eval with one template for one language == the pipeline's top-1.
    lang = "en"
    eval_dir = tmp_path / "eval-one-template"
    shutil.copytree(data / "world" / "eval", eval_dir)
    templates = json.loads((eval_dir / "templates.json").read_text())
    template = templates[lang][0]
    (eval_dir / "templates.json").write_text(json.dumps({lang: [template]}))
    run_cli(["eval", f"eval.data={eval_dir}", f"eval.languages=[{lang}]",
             "eval.out=eval-one", *SHRINK], cwd)
    ours = json.loads((cwd / "eval-one" / "metrics.json").read_text())["zero_shot"][lang]["top1"]

    import io

    from PIL import Image

    from worldclip.pipelines.evaluate.evalsets import load_eval_set

    es = load_eval_set(str(eval_dir))
    names = es.classnames[lang]
    pipe = pipeline("zero-shot-image-classification", model=str(export))
    hits = 0
    for image, label in zip(es.images, es.labels, strict=True):
        top = pipe(Image.open(io.BytesIO(image)), candidate_labels=names,
                   hypothesis_template=template)[0]["label"]
        hits += top == names[int(label)]
    assert hits / len(es.images) == pytest.approx(ours, abs=1e-9), (hits, len(es.images), ours)
