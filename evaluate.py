"""Evaluate a face model on insightface .bin verification sets (LFW, CFP-FP, AgeDB-30, ...).

    python evaluate.py --model PATH --bin FILE [--bin FILE ...] [--bin_dir DIR --targets lfw,cfp_fp,...]
                       [--config CFG] [--batch_size 128] [--fusion max|sum] [--out DIR] [--save-scores]

PATH: a SavedModel (export directory or base), a .keras model, or an original TF1 run dir / checkpoint (give its
config with --config). Prints, per dataset, the original verification and risk-controlled lines and the
error-versus-reject table, then a summary table; writes results.json, results.md, PNG figures and (with
--save-scores) <name>/scores.npz into --out.
"""
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # an entry script: keep TensorFlow's start-up chatter off

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("model", None, "SavedModel directory / export base, .keras file, or TF1 run dir / checkpoint")
flags.DEFINE_multi_string("bin", [], ".bin file to evaluate (repeatable)")
flags.DEFINE_string("bin_dir", None, "folder of .bin files; evaluates <bin_dir>/<target>.bin for each --targets")
flags.DEFINE_list("targets", ["lfw", "cfp_ff", "cfp_fp", "agedb_30", "calfw", "cplfw", "vgg2_fp"],
                  "dataset names looked up in --bin_dir")
flags.DEFINE_boolean("skip_missing", False, "leave out --bin_dir targets that are not there instead of failing")
flags.DEFINE_string("config", None, "config file: evaluation preprocessing and, for TF1 checkpoints, architecture")
flags.DEFINE_integer("batch_size", 128, "images per forward pass")
flags.DEFINE_enum("fusion", "max", ["max", "sum", "min", "mean", "harmonic"],
                  "pair uncertainty of the risk-controlled table: fusion of the two images' sigma_sq")
flags.DEFINE_string("out", None, "output folder (default log/eval/<model>-<timestamp>)")
flags.DEFINE_boolean("save_scores", False, "also write <out>/<name>/scores.npz (alias --save-scores)")
flags.DEFINE_boolean("plots", True, "write the PNG figures")
flags.DEFINE_string("method", None, "row label of the summary table (default: the model's name)")
FLAGS = flags.FLAGS


def _default_out(model_path: str) -> str:
    name = os.path.basename(os.path.normpath(model_path)) or "model"
    return os.path.join("log", "eval", "%s-%s" % (name, time.strftime("%Y%m%d-%H%M%S")))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments %s" % argv[1:])
    if not FLAGS.model:
        raise app.UsageError("--model is required")
    if not FLAGS.bin and not FLAGS.bin_dir:
        raise app.UsageError("give --bin FILE (repeatable) or --bin_dir DIR")
    logging.set_verbosity(logging.WARNING)
    from probface_tf.cli_support import fail_cleanly
    from probface_tf.eval.model_loader import load_model
    from probface_tf.eval.runner import evaluate_bins, resolve_bins

    with fail_cleanly("evaluate.py"):
        paths = resolve_bins(FLAGS.bin, FLAGS.bin_dir, FLAGS.targets, FLAGS.skip_missing)
        model = load_model(FLAGS.model, FLAGS.config)
        if FLAGS.method:
            model.label = FLAGS.method
        out = FLAGS.out or _default_out(FLAGS.model)
        evaluate_bins(model, paths, out, FLAGS.batch_size, FLAGS.fusion, FLAGS.save_scores, FLAGS.plots,
                      echo=lambda text: print(text, flush=True))


def _dashed_aliases(argv):
    # The documented spelling --save-scores maps onto the absl flag save_scores.
    return [a.replace("--save-scores", "--save_scores").replace("--nosave-scores", "--nosave_scores")
            for a in argv]


if __name__ == "__main__":
    app.run(main, argv=_dashed_aliases(sys.argv))
