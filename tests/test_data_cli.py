"""``probface-data`` run as a separate process: inspect, make-bin, synth, and their exit statuses."""
import io
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from probface_tf.data import synthetic as syn
from probface_tf.data.recordio import write_recordio

SYNTH = ["--num-identities", "6", "--images-per-identity", "3", "--seed", "5", "--image-size", "32",
         "--bin-pairs", "6", "--split", "0.34"]


def cli(*args, cwd=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", "probface_tf.data.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


def jpeg(colour, size=24):
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), colour, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "synth"
    code, out, err = cli("synth", "--root", root, *SYNTH, "--workers", "2")
    assert code == 0, err
    return root, json.loads(out)


def test_synth_writes_what_the_api_writes(synth_root, tmp_path):
    root, summary = synth_root
    assert summary["train_identities"] == 4 and summary["heldout_identities"] == 2
    assert summary["train_images"] == 12 and summary["heldout_images"] == 6 and summary["pairs"] == 6
    api = syn.synthesize(str(tmp_path), 6, 3, seed=5, image_size=32, bin_pairs=6, split=0.34, workers=1)
    for rel in ("train/00003/002.jpg", "heldout/00005/000.jpg", "synth_val.bin", "severity.csv"):
        assert (root / rel).read_bytes() == open(os.path.join(api.root, rel), "rb").read(), rel


def test_inspect_synthetic_root_counts(synth_root):
    root, _ = synth_root
    code, out, err = cli("inspect", root, "--json")
    assert code == 0, err
    reports = {os.path.basename(r["path"]): r for r in json.loads(out)}
    train, held, vbin = reports["train"], reports["heldout"], reports["synth_val.bin"]
    # Independent counts from the file system and a plain unpickle.
    assert train["identities"] == len(os.listdir(root / "train")) == 4
    assert train["images"] == sum(len(os.listdir(root / "train" / d)) for d in os.listdir(root / "train")) == 12
    assert held["identities"] == 2 and held["images"] == 6
    assert train["unreadable"] == held["unreadable"] == vbin["unreadable"] == 0
    bins, issame = pickle.loads((root / "synth_val.bin").read_bytes())
    assert vbin["pairs"] == len(issame) == 6 and vbin["images"] == len(bins) == 12
    assert vbin["positive_pairs"] == sum(issame) == 3
    assert vbin["image_shapes"] == [[32, 32, 3]]


def test_make_bin_rebuilds_the_synthetic_set(synth_root, tmp_path):
    root, _ = synth_root
    out_path = tmp_path / "again.bin"
    code, out, err = cli("make-bin", "--folder", root / "heldout", "--pairs", root / "synth_val_pairs.txt",
                         "--out", out_path)
    assert code == 0, err
    assert json.loads(out)["pairs"] == 6
    assert pickle.loads(out_path.read_bytes()) == pickle.loads((root / "synth_val.bin").read_bytes())


def test_make_bin_missing_image_is_refused(synth_root, tmp_path):
    root, _ = synth_root
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("00004 000.jpg 009.jpg\n")
    code, out, err = cli("make-bin", "--folder", root / "heldout", "--pairs", pairs, "--out", tmp_path / "x.bin")
    assert code == 1
    assert "009.jpg" in err and "not found" in err
    assert not (tmp_path / "x.bin").exists()


def test_inspect_folder_counts_unreadable_images(tmp_path):
    for ident, colours in (("alice", (10, 200)), ("bob", (90, 120, 250))):
        (tmp_path / ident).mkdir()
        for k, c in enumerate(colours):
            (tmp_path / ident / f"{k}.jpg").write_bytes(jpeg(c))
    (tmp_path / "bob" / "broken.jpg").write_bytes(jpeg(40)[:60])  # truncated JPEG
    (tmp_path / "bob" / "text.png").write_bytes(b"not an image at all")
    code, out, err = cli("inspect", tmp_path, "--json")
    assert code == 3, err
    (report,) = json.loads(out)
    assert report["kind"] == "folder" and report["identities"] == 2 and report["images"] == 7
    assert report["images_per_identity"] == [2, 3.5, 5]
    assert report["unreadable"] == 2
    named = " ".join(report["unreadable_examples"])
    assert "broken.jpg" in named and "text.png" in named


def test_inspect_list_file(tmp_path):
    paths = []
    for k, c in enumerate((0, 60, 120)):
        (tmp_path / f"{k}.jpg").write_bytes(jpeg(c))
        paths.append(f"{k}.jpg {k % 2}")
    (tmp_path / "train.txt").write_text("\n".join(paths) + "\n")
    code, out, err = cli("inspect", tmp_path / "train.txt", "--json", "--no-decode")
    assert code == 0, err
    (report,) = json.loads(out)
    assert (report["kind"], report["identities"], report["images"]) == ("list", 2, 3)
    assert "unreadable" not in report  # --no-decode does not pretend to have checked


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_inspect_refuses_a_malicious_bin(tmp_path):
    bad = tmp_path / "evil.bin"
    bad.write_bytes(pickle.dumps(([jpeg(1), jpeg(2)], [_Exploit()])))
    code, out, err = cli("inspect", bad, cwd=tmp_path)
    assert code == 1
    assert "REFUSED" in out and "evil.bin" in out and "system" in out
    assert not (tmp_path / "pwned").exists()


def test_inspect_recordio_and_a_truncated_copy(tmp_path):
    rec = tmp_path / "train.rec"
    write_recordio(str(rec), [[jpeg(10), jpeg(20)], [jpeg(30)], [jpeg(40), jpeg(50), jpeg(60)]])
    cut = tmp_path / "cut" / "train.rec"
    cut.parent.mkdir()
    data = rec.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    (cut.parent / "train.idx").write_bytes((tmp_path / "train.idx").read_bytes())
    code, out, err = cli("inspect", rec, cut, "--json", "--no-decode")
    assert code == 1, err
    whole, truncated = json.loads(out)
    assert (whole["kind"], whole["identities"], whole["images"]) == ("recordio", 3, 6)
    assert whole["images_per_identity"] == [1, 2.0, 3]
    assert truncated["kind"] == "recordio" and str(cut) in truncated["error"]


def test_usage_errors(tmp_path):
    assert cli("frobnicate")[0] == 2
    code, _, err = cli("synth", "--root", tmp_path / "s", "--num-identities", "3", "--images-per-identity", "2",
                       "--split", "0.9")
    assert code == 1 and "split" in err
    code, out, _ = cli("inspect", tmp_path / "nowhere")
    assert code == 1 and "nowhere" in out


def test_synth_over_a_users_identity_tree_keeps_it(synth_root, tmp_path):
    """A copied identity tree with a file of the user's own under --root: exit 1, one line naming its files,
    every file still there."""
    root, _ = synth_root
    user = tmp_path / "u"
    shutil.copytree(root / "train", user / "train")
    (user / "train" / "00000" / "mine.txt").write_text("keep me")
    before = sorted(p.relative_to(user) for p in user.rglob("*"))
    code, out, err = cli("synth", "--root", user, *SYNTH, "--workers", "1")
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("probface-data synth: error: ")
    assert "train/00000/000.jpg" in lines[0] and "nothing was removed" in lines[0]
    assert sorted(p.relative_to(user) for p in user.rglob("*")) == before
    assert (user / "train" / "00000" / "mine.txt").read_text() == "keep me"
