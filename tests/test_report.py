"""report.html: content, self-containment, and a real render in headless Chromium."""

import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from people_run import make_run
from PIL import Image

from dcloop.people.cli import report_main
from dcloop.people.report import render_report, thumbnail_png, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    dm = make_run(d)
    return d, dm


def test_report_content_is_self_contained(run):
    d, dm = run
    html = render_report(d, dataset=dm.train_dataset, worst=10)
    issues = pd.read_csv(d / "label_issues.csv")
    assert "<h2>Summary</h2>" in html and "1167 training samples" in html
    assert "The 10 worst samples" in html and html.count('class="card ') == 10
    for r in issues.head(10).itertuples():  # the gallery is the issue table's head, in order
        assert f"#{r.index} " in html
    pos = [html.index(f"#{i} ") for i in issues["index"].head(10)]
    assert pos == sorted(pos)
    det = json.loads((d / "metrics.json").read_text())["detection"]
    assert "Precision and recall" in html and f"{det['precision']:.3f}" in html
    for section in ("Noise matrix", "Per class", "Flags and quality per epoch"):
        assert f"<h2>{section}</h2>" in html
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == 10 + 5  # 10 thumbnails; PR curve, 2 heatmaps, class, epoch charts
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in html and "https://" not in html  # opens offline
    assert html.count("thumbnail of sample") == 10


def test_report_without_ground_truth_or_data(run, tmp_path):
    d, _ = run
    for f in ("label_issues.csv", "class_report.csv", "noise_matrix.csv", "metrics.json"):
        shutil.copy(d / f, tmp_path / f)
    issues = pd.read_csv(tmp_path / "label_issues.csv").drop(columns=["true_label", "is_noisy"])
    issues.to_csv(tmp_path / "label_issues.csv", index=False)
    m = json.loads((tmp_path / "metrics.json").read_text())
    del m["detection"], m["noise_injected"]
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    html = render_report(tmp_path, worst=3)
    assert "Precision and recall" not in html and "label was wrong" not in html
    assert html.count("no preview") == 3
    with pytest.raises(FileNotFoundError, match="noise_matrix.csv"):
        (tmp_path / "noise_matrix.csv").unlink()
        render_report(tmp_path)


def test_spectrogram_for_audio_inputs():
    t = torch.arange(4096, dtype=torch.float32)
    tone = torch.sin(2 * torch.pi * 0.25 * t)  # half of Nyquist
    for x in (tone, tone[None]):  # (T,) and (1, T)
        img = np.asarray(Image.open(io.BytesIO(thumbnail_png(x))).convert("L"), dtype=float)
        row = img.mean(1).argmax() / (img.shape[0] - 1)
        assert abs(row - 0.5) < 0.08  # the tone is the bright line halfway up
    img = Image.open(io.BytesIO(thumbnail_png(torch.rand(3, 8, 8))))
    assert img.mode == "RGB" and img.size == (96, 96)


def test_report_cli_rerenders(run, capsys):
    d, _ = run
    assert report_main([str(d), "--worst", "4"]) == 0
    assert "report.html" in capsys.readouterr().out
    html = (d / "report.html").read_text()
    assert html.count('class="card ') == 4 and html.count("thumbnail of sample") == 4


def _chromium(args, timeout=120):
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_report_renders_in_headless_chromium(run, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI must run `make system-deps`)")
        pytest.skip("chromium is not installed")
    d, dm = run
    page = write_report(d, dataset=dm.train_dataset, worst=12, path=tmp_path / "report.html")
    profile = tmp_path / "profile"
    dom = _chromium(
        [f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    ).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    total = int(re.search(r'data-images-total="(\d+)"', body.group(0)).group(1))
    loaded = int(re.search(r'data-images-loaded="(\d+)"', body.group(0)).group(1))
    assert total == 12 + 5 and loaded == total  # every embedded image decoded
    assert "The 12 worst samples" in dom and "estimated noise rate" in dom
    shot = tmp_path / "shot.png"
    _chromium(
        [
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=1280,3000",
            page.as_uri(),
        ]
    )
    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape == (3000, 1280) and img.std() > 10  # a page was drawn, not a blank


def test_report_names_the_label_file_the_run_used(tmp_path):
    labels = tmp_path / "labels_v1.csv"
    rows = {
        "index": [0, 1, 2],
        "label": [3, 4, 5],
        "status": ["corrected", "corrected", "confirmed"],
    }
    pd.DataFrame(rows).to_csv(labels, index=False)
    make_run(tmp_path / "run", labels_file=labels)
    html = render_report(tmp_path / "run", worst=0)
    assert f"{labels}: 3 rows; 2 corrected, 1 confirmed" in html
    assert "The 0 worst samples" in html


def test_gallery_shows_spectrograms_for_audio(run):
    d, dm = run
    g = torch.Generator().manual_seed(0)
    clips = [(torch.randn(1, 2000, generator=g), 0, i) for i in range(dm.num_train)]
    html = render_report(d, dataset=clips, worst=3)
    assert html.count("spectrogram of sample") == 3 and "thumbnail of sample" not in html
