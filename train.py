"""Train a ProbFace model from a config file.

    python train.py configs/resface64_msarcface.py [--set key=value ...] [--name NAME] [--resume]

The config's ``stage`` selects what runs: 'probface' trains the uncertainty head on a restored, frozen
backbone (the original recipe), 'backbone' trains a ResFace backbone with a margin softmax, 'demo' runs the
whole synthetic pipeline.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # an entry script: keep TensorFlow's start-up chatter off

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_multi_string("set", [], "override a config key: --set key=value (Python literal or bare string)")
flags.DEFINE_string("name", None, "rename the run (the original --name)")
flags.DEFINE_boolean("resume", False, "continue the latest run of this name from its latest checkpoint")
flags.DEFINE_string("run_dir", None, "explicit run directory (default log_base_dir/name/<timestamp>)")
flags.DEFINE_integer("max_steps", None, "stop after this global step (for smoke runs)")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: python train.py CONFIG_FILE [--set key=value ...]")
    logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO chatter would bury the training log
    from probface_tf.cli_support import fail_cleanly
    from probface_tf.config import load_config

    with fail_cleanly("train.py"):
        overrides = list(FLAGS.set) + ([f"name={FLAGS.name}"] if FLAGS.name else [])
        cfg = load_config(argv[1], overrides)
        if cfg.stage == "probface":
            from probface_tf.train.loop import train
        elif cfg.stage == "backbone":
            from probface_tf.train.backbone import train
        else:
            from probface_tf.demo import train
        train(cfg, config_path=argv[1], resume=FLAGS.resume, run_dir=FLAGS.run_dir, max_steps=FLAGS.max_steps)


if __name__ == "__main__":
    app.run(main)
