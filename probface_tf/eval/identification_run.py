"""``evaluate.py --gallery_protocol DIR``: recognise which 1:N protocol a folder holds and run it.

* ``gallery.csv`` + ``probes.csv``: the folder protocol (``identification_protocol.read_folder_protocol``);
* ``<target>_face_tid_mid.txt``: insightface's IJB-C / IJB-B 1:N meta folder (``ijbc_1n``), images under
  ``image_root`` (the ``loose_crop`` folder);
* ``id_lfw.mat``: a BLUFR configuration folder (``blufr``), images under ``image_root`` (LFW aligned).
"""
from __future__ import annotations

import os

from probface_tf.eval.blufr import evaluate_blufr, read_blufr, read_image_list
from probface_tf.eval.extraction import extract_files
from probface_tf.eval.identification_protocol import (GALLERY_FILE, ProtocolError, read_folder_protocol,
                                                      run_identification)
from probface_tf.eval.ijbc_1n import read_ijbc_1n
from probface_tf.eval.report import markdown_table, write_json


def protocol_kind(folder: str, target: str = "ijbc") -> str:
    if os.path.isfile(os.path.join(folder, GALLERY_FILE)):
        return "folder"
    if os.path.isfile(os.path.join(folder, f"{target}_face_tid_mid.txt")):
        return "ijb"
    if os.path.isfile(os.path.join(folder, "id_lfw.mat")):
        return "blufr"
    raise ProtocolError(f"--gallery_protocol {folder}: neither {GALLERY_FILE} (folder protocol), "
                        f"{target}_face_tid_mid.txt (IJB 1:N meta files) nor id_lfw.mat (BLUFR) in it")


def run_blufr(model, folder: str, image_root: str, out: str, batch_size: int = 128, echo=print) -> dict:
    if not image_root:
        raise ProtocolError("BLUFR: give --image_root, the folder of the LFW images the image list names")
    config = read_blufr(folder)
    mu, sigma_sq, _ = extract_files([model], read_image_list(folder, image_root), batch_size, source="BLUFR LFW")[0]
    result = {"protocol": "blufr-lfw", "model": model.name, **evaluate_blufr(config, mu, sigma_sq)}
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "results.json"), result)
    keys = [k for k in result["cosine"]]
    text = "## BLUFR open-set LFW (rank-1 DIR %)\n\n" + markdown_table(
        ["score"] + keys, [[s] + [f"{100 * result[s][k]:.2f}" for k in keys] for s in ("cosine", "fastmls")]) + "\n"
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(text)
    echo(text)
    return result


def run_protocol_folder(model, folder: str, image_root: str | None, out: str, target: str = "ijbc",
                        gallery: str = "both", batch_size: int = 128, echo=print, plots: bool = True) -> dict:
    kind = protocol_kind(folder, target)
    if kind == "blufr":
        return run_blufr(model, folder, image_root, out, batch_size, echo)
    if kind == "ijb":
        if not image_root:
            raise ProtocolError("IJB 1:N: give --image_root, the folder of the face crops (loose_crop)")
        protocol = read_ijbc_1n(folder, image_root, target, gallery)
    else:
        protocol = read_folder_protocol(folder)
    return run_identification(model, protocol, out, batch_size, echo, plots)
