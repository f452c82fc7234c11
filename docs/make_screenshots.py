"""The screenshots in README.md: a run page and a feature page served by a real `saexplain serve` and
photographed by Playwright in Debian's chromium.

    .venv/bin/python docs/make_screenshots.py --store ~/.cache/saexplain/saexplain.db --run 5   # e.g. `make demo`'s run
    .venv/bin/python docs/make_screenshots.py      # without --store: a run of the fast suite's tiny model
                                                   # (tests/tiny.py) with the ScriptedLLM (canned replies)
Writes docs/img/run-page.png and docs/img/feature-page.png."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tiny_run(tmp: Path) -> tuple[str, int]:
    os.environ["SAEXPLAIN_HOME"] = str(tmp / "home")
    from saexplain.cache.latents import CacheConfig
    from saexplain.data.contexts import CorpusConfig
    from saexplain.explain.sage import SAGEConfig
    from saexplain.pipeline.runner import RunConfig, StageConfigs, run_all
    from saexplain.sampling.sampler import SamplingConfig
    from saexplain.subject.oracle import SubjectConfig
    from saexplain.testing.scripted import ScriptedBackend, universal
    from saexplain.testing.tiny import write_ground_truth_sae, write_tiny_model

    gt = write_ground_truth_sae(write_tiny_model(tmp / "model"), tmp / "sae")
    corpus = tmp / "tales.txt"
    corpus.write_text((ROOT / "tests/data/grimm_tales.txt").read_text(encoding="utf-8")[:120_000])
    cfgs = StageConfigs(run=RunConfig(features="0,1,2", explainers="oneshot,sage",
                                      scorers="detection,generation,embedding", store=str(tmp / "store.db")),
                        subject=SubjectConfig(model=str(gt["model"]), sae=str(gt["sae"])),
                        corpus=CorpusConfig(corpus=[str(corpus)], context=48), cache=CacheConfig(tokens=30_000),
                        sampling=SamplingConfig(window=16), sage=SAGEConfig(selection="none"))
    h = run_all(cfgs, echo=lambda m: None, backend=ScriptedBackend(universal))
    return cfgs.run.store, h.run_id


def main() -> None:
    import argparse
    import json

    ap = argparse.ArgumentParser()
    ap.add_argument("--store")
    ap.add_argument("--run", type=int)
    ap.add_argument("--feature", type=int, help="default: the run's first feature")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="saexplain-shots-"))
    store, run_id = (args.store, args.run) if args.store else tiny_run(tmp)
    from saexplain.web.launch import ServerProcess

    try:
        with ServerProcess(store) as srv:
            url = srv.url
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:
                b = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
                    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync"])
                page = b.new_page(viewport={"width": 1280, "height": 1000})
                feature = args.feature
                if feature is None:
                    feature = json.loads(urllib.request.urlopen(f"{url}/api/runs/{run_id}/features").read())[0]["feature"]
                page.goto(f"{url}/runs/{run_id}")
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(ROOT / "docs/img/run-page.png"), full_page=True)
                page.goto(f"{url}/runs/{run_id}/features/{feature}")
                page.locator("#lens .lens-row").first.wait_for()
                page.fill("#probe-form textarea", "The fisherman's wife sat by the sea." if not args.store else
                          "".join(t for t in page.locator(".example.pool-explain .window").first.inner_text()))
                page.click("#probe-form button")
                page.locator("#probe-out .tok").first.wait_for()
                page.locator(".example .tok.on").first.hover()
                page.screenshot(path=str(ROOT / "docs/img/feature-page.png"), full_page=True, clip={
                    "x": 0, "y": 0, "width": 1280, "height": 1750})
                b.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("written: docs/img/run-page.png docs/img/feature-page.png")


if __name__ == "__main__":
    main()
