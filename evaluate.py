"""Evaluate face models on insightface .bin verification sets (LFW, CFP-FP, AgeDB-30, ...) or on template pairs.

    python evaluate.py --model PATH [--model PATH ...] [--method NAME ...]
                       --bin FILE [--bin FILE ...] [--bin_dir DIR --targets lfw,cfp_fp,...]
                       [--config CFG] [--batch_size 128] [--fusion max|sum] [--out DIR] [--save-scores]
    python evaluate.py --model PATH [--model PATH ...] --templates LIST_OR_DIR --template_pairs FILE
    python evaluate.py --model PATH --gallery_protocol DIR [--image_root ROOT] [--ijb_gallery G1|G2|both]
    python evaluate.py --model PATH --ijb ijba|ijbc --ijb_images DIR --ijb_proto DIR [--template_fusion pfe]
    python evaluate.py --model PATH --lfw_dir DIR --lfw_pairs pairs.txt
    python evaluate.py --model M.keras --explain IMAGE_OR_DIR --out DIR

PATH: a SavedModel (export directory or base), a .keras model (ProbFace or a baseline with outputs mu and
uncertainty), a ScaleFace run dir, or an original TF1 run dir / checkpoint (give its config with --config).
Prints, per dataset, the original verification and risk-controlled lines and the error-versus-reject table,
then a summary table; writes results.json, results.md, PNG figures and (with --save-scores) <name>/scores.npz
into --out. With several --model: each model's outputs in --out/<method>/, and a comparison table (method x
dataset) in --out/results.md, results.json ("comparison") and on stdout. With --templates: TAR@FAR of template
pairs for PFE fusion + FastMLS, PFE fusion + cosine and mean pooling + cosine. With --gallery_protocol DIR: 1:N
identification (CMC, TPIR@FPIR for cosine, FastMLS and FastMLS with the riskiest probes rejected; the open-set
thresholds a gallery stores, see docs/search.md).
"""
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # an entry script: keep TensorFlow's start-up chatter off

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_multi_string("model", [], "SavedModel directory / export base, .keras file, ScaleFace run dir, or TF1 "
                          "run dir / checkpoint; repeat to compare several methods")
flags.DEFINE_multi_string("method", [], "label of each --model (same count and order; default: the model's name)")
flags.DEFINE_multi_string("bin", [], ".bin file to evaluate (repeatable)")
flags.DEFINE_string("bin_dir", None, "folder of .bin files; evaluates <bin_dir>/<target>.bin for each --targets")
flags.DEFINE_list("targets", ["lfw", "cfp_ff", "cfp_fp", "agedb_30", "calfw", "cplfw", "vgg2_fp"],
                  "dataset names looked up in --bin_dir")
flags.DEFINE_boolean("skip_missing", False, "leave out --bin_dir targets that are not there instead of failing")
flags.DEFINE_multi_string("config", [], "config file: evaluation preprocessing and, for TF1 checkpoints, "
                          "architecture; once for every --model or once per --model ('' = none)")
flags.DEFINE_string("templates", None, "template list (template_id,image_path rows) or folder of template "
                    "sub-folders: evaluate template pairs instead of .bin files")
flags.DEFINE_string("template_pairs", None, "template_id_1,template_id_2,label rows (with --templates)")
flags.DEFINE_string("image_root", None, "folder the --templates image paths are relative to (default: the "
                    "list's folder)")
flags.DEFINE_enum("ijb", None, ["ijba", "ijbc"], "the original's IJB-A (10 splits) / IJB-C 1:1 protocol; with "
                  "--ijb_images (aligned images) and --ijb_proto (the protocol folder, files unchanged)")
flags.DEFINE_string("ijb_images", None, "aligned IJB images (IJB-A: <dir>/frame|img/<id>.*, IJB-C: <dir>/<subject>/"
                    "img_<id>.*)")
flags.DEFINE_string("ijb_proto", None, "IJB protocol folder (IJB-A: holds IJB-A_11_sets/; IJB-C: the ijbc_*.csv)")
flags.DEFINE_enum("template_fusion", "original", ["original", "pfe"], "--ijb template fusion: the original's "
                  "temperature-weighted pooling (T in 1, 0.5, 2) and mean of [mu, sigma_sq], or PFE's precision-"
                  "weighted fusion")
flags.DEFINE_string("lfw_dir", None, "LFW image folder (aligned, any nesting): the original's eval_lfw.py with "
                    "--lfw_pairs; images are uint8 files, so no contrast stretch (the .bin path stretches)")
flags.DEFINE_string("lfw_pairs", None, "the standard LFW pairs.txt (with --lfw_dir)")
flags.DEFINE_string("explain", None, "image file or folder: write Grad-CAM panels [image | sigma_sq | mu] of the "
                    ".keras --model into --out (the original's Grad-CAM tool)")
flags.DEFINE_string("gallery_protocol", None, "1:N identification: a folder with gallery.csv and probes.csv "
                    "(identity,image_path rows), insightface's IJB-C/IJB-B meta folder (with --ijb_target), or a "
                    "BLUFR configuration folder (id_lfw.mat, ...); images under --image_root")
flags.DEFINE_string("ijb_target", "ijbc", "IJB 1:N meta files' prefix: ijbc or ijbb")
flags.DEFINE_string("ijb_gallery", "both", "IJB 1:N gallery set: G1, G2 (IJB-B: S1, S2) or both")
flags.DEFINE_integer("batch_size", 128, "images per forward pass")
flags.DEFINE_enum("fusion", "max", ["max", "sum", "min", "mean", "harmonic"],
                  "pair uncertainty of the risk-controlled table: fusion of the two images' sigma_sq")
flags.DEFINE_enum("sigma_dims", "original", ["original", "full"], "a D-dim sigma_sq on .bin sets: 'original' "
                  "scores FastMLS on its first column and takes the risk percentile over all P x D values (the "
                  "original's verification scripts); 'full' uses D-dim MLS and the per-image harmonic mean")
flags.DEFINE_string("out", None, "output folder (default log/eval/<model>-<timestamp>)")
flags.DEFINE_boolean("save_scores", False, "also write per-pair scores (.npz) into --out (alias --save-scores)")
flags.DEFINE_boolean("plots", True, "write the PNG figures")
flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16", "float16"],
                  "precision of the backbone of .keras / TF1 ProbFace models (bfloat16: several times faster on "
                  "CPUs with AMX/AVX512-BF16, mu within 2.5e-3 on ResFace64)")
flags.DEFINE_enum("distribute_strategy", "default", ["default", "mirrored", "multi_worker_mirrored"],
                  "tf.distribute strategy of the feature extraction (see docs/distributed.md)")
flags.DEFINE_integer("distribute_cpu_devices", 0, "with --distribute_strategy mirrored and no GPU: split the CPU "
                     "into this many logical devices")
FLAGS = flags.FLAGS


def _default_out(name: str) -> str:
    name = os.path.basename(os.path.normpath(name)) or "model"
    return os.path.join("log", "eval", "%s-%s" % (name, time.strftime("%Y%m%d-%H%M%S")))


def _check_flags() -> list[str]:
    """Usage errors before anything heavy is imported; returns the method labels."""
    from probface_tf.eval.compare import ComparisonError, method_labels

    if not FLAGS.model:
        raise app.UsageError("--model is required")
    if FLAGS.batch_size < 1:
        raise app.UsageError(f"--batch_size must be >= 1, got {FLAGS.batch_size}")
    if FLAGS.explain is not None:
        if len(FLAGS.model) != 1:
            raise app.UsageError("--explain takes one --model")
    elif FLAGS.lfw_dir is not None or FLAGS.lfw_pairs is not None:
        if not (FLAGS.lfw_dir and FLAGS.lfw_pairs) or FLAGS.bin or FLAGS.bin_dir or FLAGS.templates or FLAGS.ijb:
            raise app.UsageError("--lfw_dir DIR and --lfw_pairs FILE go together, without --bin/--templates/--ijb")
    elif FLAGS.ijb is not None:
        if not (FLAGS.ijb_images and FLAGS.ijb_proto) or FLAGS.bin or FLAGS.bin_dir or FLAGS.templates:
            raise app.UsageError("--ijb needs --ijb_images DIR and --ijb_proto DIR and no --bin/--bin_dir/--templates")
    elif FLAGS.gallery_protocol is not None:
        if FLAGS.bin or FLAGS.bin_dir or FLAGS.templates:
            raise app.UsageError("--gallery_protocol runs the 1:N protocol alone; run evaluate.py once for each")
        if len(FLAGS.model) != 1:
            raise app.UsageError("--gallery_protocol evaluates one --model at a time")
    elif FLAGS.templates is not None or FLAGS.template_pairs is not None:
        if not (FLAGS.templates and FLAGS.template_pairs):
            raise app.UsageError("--templates LIST_OR_DIR and --template_pairs FILE go together")
        if FLAGS.bin or FLAGS.bin_dir:
            raise app.UsageError("--templates evaluates template pairs and cannot be combined with --bin/--bin_dir; "
                                 "run evaluate.py once for each")
    elif not FLAGS.bin and not FLAGS.bin_dir:
        raise app.UsageError("give --bin FILE (repeatable) or --bin_dir DIR, or --templates with --template_pairs")
    if len(FLAGS.config) not in (0, 1, len(FLAGS.model)):
        raise app.UsageError(f"--config given {len(FLAGS.config)} times for {len(FLAGS.model)} --model(s): give it "
                             f"once (used for every model) or once per --model in the same order ('' for none)")
    try:
        return method_labels(FLAGS.model, FLAGS.method)
    except ComparisonError as exc:
        raise app.UsageError(str(exc)) from None


def _load_models(labels: list[str]) -> list:
    from probface_tf.loading import load
    from probface_tf.train.distribute import make_strategy

    # Feature extraction under a tf.distribute strategy: models are loaded in its scope (mirrored variables) and
    # each batch is split over the replicas, the features coming back in order.
    strategy = make_strategy(FLAGS.distribute_strategy, FLAGS.distribute_cpu_devices)
    configs = FLAGS.config * len(FLAGS.model) if len(FLAGS.config) == 1 else FLAGS.config or [None] * len(labels)
    models = []
    for path, config, label in zip(FLAGS.model, configs, labels):
        with strategy.scope():
            model = load(path, config=config or None, compute_dtype=FLAGS.compute_dtype, detector=None).engine
        model.distribute(strategy)
        if FLAGS.method or len(labels) > 1:  # a lone model keeps its own name unless --method says otherwise
            model.label = label
        models.append(model)
    return models


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments %s" % argv[1:])
    labels = _check_flags()
    logging.set_verbosity(logging.WARNING)
    from probface_tf.cli_support import fail_cleanly

    echo = lambda text: print(text, flush=True)  # noqa: E731
    with fail_cleanly("evaluate.py"):
        if FLAGS.explain:
            from probface_tf.eval.explain import explain_model_file

            explain_model_file(FLAGS.model[0], FLAGS.explain, FLAGS.out or _default_out(FLAGS.model[0] + "-explain"),
                               (FLAGS.config or [None])[0] or None, echo)
        elif FLAGS.lfw_dir:
            _lfw_pairs(labels, echo)
        elif FLAGS.ijb:
            _ijb(labels, echo)
        elif FLAGS.gallery_protocol:
            _gallery_protocol(labels, echo)
        elif FLAGS.templates:
            _templates(labels, echo)
        else:
            _bins(labels, echo)


def _bins(labels, echo) -> None:
    from probface_tf.eval.compare import evaluate_methods
    from probface_tf.calibration import Calibration
    from probface_tf.eval.preflight import check_both_classes, check_out_dir
    from probface_tf.eval.runner import evaluate_bin, report_results, resolve_bins

    paths = resolve_bins(FLAGS.bin, FLAGS.bin_dir, FLAGS.targets, FLAGS.skip_missing)
    out = FLAGS.out or _default_out(FLAGS.model[0] if len(labels) == 1 else "compare")
    check_out_dir(out)  # before the extraction: nothing computed is lost to a bad --out
    check_both_classes(paths)
    models = _load_models(labels)
    if len(models) == 1:
        pairs = []  # each dataset's per-pair arrays, kept for calibration.json

        def evaluated():  # lazily, so each dataset's text is echoed as it ends
            for path in paths:
                result = evaluate_bin(models[0], path, FLAGS.batch_size, FLAGS.fusion, sigma_dims=FLAGS.sigma_dims)
                pairs.append(result[1])
                yield result

        report_results(models[0], evaluated(), out, FLAGS.fusion, FLAGS.save_scores, FLAGS.plots, echo)
        Calibration.from_score_arrays(pairs, ",".join(os.path.basename(p) for p in paths)).save(
            os.path.join(out, "calibration.json"))
        print("wrote %s (decision thresholds for probface verify)" % os.path.join(out, "calibration.json"),
              file=sys.stderr)  # stdout ends with the summary table
    else:
        evaluate_methods(models, paths, out, FLAGS.batch_size, FLAGS.fusion, FLAGS.save_scores, FLAGS.plots, echo,
                         FLAGS.sigma_dims)


def _templates(labels, echo) -> None:
    from probface_tf.eval.compare import folder_names
    from probface_tf.eval.preflight import check_out_dir
    from probface_tf.eval.template_protocol import load_protocol
    from probface_tf.eval.templates import run_templates

    protocol = load_protocol(FLAGS.templates, FLAGS.template_pairs, FLAGS.image_root)
    out = FLAGS.out or _default_out((FLAGS.model[0] if len(labels) == 1 else "compare") + "-templates")
    check_out_dir(out)
    models = _load_models(labels)
    run_templates(models, protocol, out, folder_names([m.name for m in models]), FLAGS.batch_size,
                  FLAGS.save_scores, echo)


def _ijb(labels, echo) -> None:
    from probface_tf.eval.ijb import load_protocol, run_ijb
    from probface_tf.eval.preflight import check_out_dir

    protocol = load_protocol(FLAGS.ijb, FLAGS.ijb_images, FLAGS.ijb_proto)
    out = FLAGS.out or _default_out((FLAGS.model[0] if len(labels) == 1 else "compare") + "-" + FLAGS.ijb)
    check_out_dir(out)
    models = _load_models(labels)
    run_ijb(models, protocol, out, FLAGS.batch_size, FLAGS.template_fusion, echo)


def _lfw_pairs(labels, echo) -> None:
    from probface_tf.eval.lfw_pairs import load_lfw_pairs, run_lfw_pairs
    from probface_tf.eval.preflight import check_out_dir

    pairs = load_lfw_pairs(FLAGS.lfw_dir, FLAGS.lfw_pairs)
    out = FLAGS.out or _default_out((FLAGS.model[0] if len(labels) == 1 else "compare") + "-lfw_pairs")
    check_out_dir(out)
    models = _load_models(labels)
    run_lfw_pairs(models, pairs, out, FLAGS.batch_size, echo)


def _gallery_protocol(labels, echo) -> None:
    from probface_tf.eval.identification_run import run_protocol_folder

    model = _load_models(labels)[0]
    out = FLAGS.out or _default_out(FLAGS.model[0] + "-1n")
    run_protocol_folder(model, FLAGS.gallery_protocol, FLAGS.image_root, out, FLAGS.ijb_target, FLAGS.ijb_gallery,
                        FLAGS.batch_size, echo, FLAGS.plots)


def _dashed_aliases(argv):
    # The documented spelling --save-scores maps onto the absl flag save_scores.
    return [a.replace("--save-scores", "--save_scores").replace("--nosave-scores", "--nosave_scores")
            for a in argv]


if __name__ == "__main__":
    app.run(main, argv=_dashed_aliases(sys.argv))
