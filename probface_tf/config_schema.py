"""Every config key: accepted types, default, what it does, and whether anything reads it.

The original ProbFace keys keep their names and meanings; the keys below them are this implementation's.
``probface_tf.config`` checks recipes against this table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Key:
    types: tuple
    default: Any
    doc: str
    choices: tuple | None = None
    ignored: bool = False  # an original key that nothing reads; accepted so the original recipes load


_NUM = (int, float)
_OPT_STR = (str, type(None))
_OPT_LIST = (list, tuple, type(None))

SCHEMA: dict[str, Key] = {
    # ---- input / output (original keys) ----
    "name": Key((str,), "probface", "run name: runs are written to log_base_dir/name/YYYYmmdd-HHMMSS/"),
    "log_base_dir": Key((str,), "./log/", "folder that holds the runs"),
    "summary_interval": Key((int,), 100, "log a training line every N steps (step % N == 0)"),
    "train_dataset_path": Key((str, list, tuple, type(None)), None, "image folder, insightface .rec, or "
                              "'<path> <label>' list file; a list of them is merged into one dataset"),
    "test_data_dir_mx": Key(_OPT_STR, None, "folder of insightface .bin verification files"),
    "image_size": Key((list, tuple), [96, 96], "network input [height, width] (multiples of 16)"),
    "channels": Key((int,), 3, "3 = RGB"),
    "preprocess_train": Key((list,), None, "op list: ['resize', (h, w)], ['random_flip'], ['standardize', 'mean_scale']"),
    "preprocess_test": Key((list,), None, "op list applied to evaluation images"),
    "num_gpus": Key((int,), 1, "ignored (use distribute_strategy)", ignored=True),
    # ---- network (original keys) ----
    "embedding_network": Key((str,), "models/resface64_relu.py", "backbone: original file name or builder name"),
    "uncertainty_module": Key((str,), "models/uncertainty_module.py", "ignored (the head is chosen by head_type)",
                              ignored=True),
    "uncertainty_module_input": Key((str,), "conv_final", "backbone end point feeding the head"),
    "embedding_size": Key((int,), 256, "mu dimension"),
    "uncertainty_module_output_size": Key((int,), 1, "1 (FastMLS) or embedding_size (D-dim MLS)"),
    # ---- training strategy (original keys) ----
    "base_random_seed": Key((int,), 0, "seed of the data sampler"),
    "batch_size": Key((int,), 128, "images per batch before doubling"),
    "batch_format": Key((dict,), None, "{'size': batch_size, 'num_classes': identities per batch}"),
    "epoch_size": Key((int,), 1000, "steps per epoch"),
    "num_epochs": Key((int,), 12, "epochs"),
    "learning_rate_strategy": Key((str,), "step", "'step' (learning_rate_schedule {first_step: lr}), 'cosine' "
                                  "({'initial', 'interval', 'end_step'}) or 'linear' ({'initial', 'start', "
                                  "'end_step'})", ("step", "cosine", "linear")),
    "lr": Key(_NUM, 1e-2, "base learning rate"),
    "learning_rate_schedule": Key((dict,), None, "'step': {first_step: lr}, the largest key <= global step wins; "
                                  "see learning_rate_strategy for the others"),
    "restore_model": Key(_OPT_STR, None, "original run dir / TF1 ckpt, .keras backbone, or our checkpoint dir"),
    "restore_scopes": Key(_OPT_LIST, None, "only restore variables whose name contains one of these"),
    "exclude_restore_scopes": Key(_OPT_LIST, None, "skip variables whose name contains one of these"),
    "weight_decay": Key(_NUM, 5e-4, "L2 on the head's two weight matrices (slim form wd*sum(w^2)/2)"),
    "keep_prob": Key(_NUM, 1.0, "dropout keep probability before the bottleneck"),
    "discriminat_metric_type": Key((str,), "triplet_semihard", "ignored by the original (always triplet_semihard) "
                                   "unless honour_discriminat_metric_type", ("triplet_semihard", "contrastive")),
    "loss_weights": Key((dict,), None, "{'mls_loss', 'output_constraint_loss', 'discriminate_loss'}"),
    "output_constraint_type": Key((str,), "", "'L2', 'L1' or '' (no output constraint)"),
    "s_wd_type": Key((str,), "", "ignored (read by nothing in the original either)", ignored=True),
    "s_wd_alpha": Key(_NUM, 0.0, "ignored (read by nothing in the original either)", ignored=True),
    # ---- this implementation ----
    "stage": Key((str,), "probface", "'probface' = train the uncertainty head; 'backbone' = margin-softmax stage 1; "
                 "'demo' = synthetic data, both stages, evaluation", ("probface", "backbone", "demo")),
    "backbone_filters": Key(_OPT_LIST, None, "override the stage widths, e.g. [16, 32, 64, 128]"),
    "backbone_blocks": Key(_OPT_LIST, None, "override the blocks per stage, e.g. [1, 1, 1, 1]"),
    "triplet_margin": Key(_NUM, 3.0, "margin of the identification-preserving loss"),
    "honour_discriminat_metric_type": Key((bool,), False, "use discriminat_metric_type (the original ignores it)"),
    "double_batch": Key((bool,), True, "original: append the test-preprocessed copy of each batch (256 images)"),
    "max_identities": Key((int, type(None)), 20000, "original: only the first 20000 identities (sorted names)"),
    "momentum": Key(_NUM, 0.9, "momentum of the SGD optimizer"),
    "momentum_form": Key((str,), "tf1", "'tf1': acc = m*acc + g; w -= lr*acc  |  'keras': Keras SGD",
                         ("tf1", "keras")),
    "eval_contrast_stretch": Key((bool,), True, "original quirk: min-max stretch float .bin images before resize"),
    "resize_method": Key((str,), "pil_bilinear", "'pil_bilinear' (scipy.misc.imresize, antialiased) or "
                         "'bilinear' (tf.image.resize without antialias)", ("pil_bilinear", "bilinear")),
    "test_targets": Key((list, tuple), ["cfp_fp"], "names of .bin files in test_data_dir_mx evaluated each epoch"),
    "test_bin_paths": Key(_OPT_LIST, None, "explicit .bin paths evaluated each epoch (in addition to targets)"),
    "eval_batch_size": Key((int,), 128, "feature extraction batch size"),
    "mixed_precision": Key((str,), "float32", "Keras dtype policy", ("float32", "mixed_float16", "mixed_bfloat16")),
    "distribute_strategy": Key((str,), "default", "'default' (one device), 'mirrored' (all local GPUs) or "
                               "'multi_worker_mirrored' (the cluster in TF_CONFIG); see docs/distributed.md",
                               ("default", "mirrored", "multi_worker_mirrored")),
    "distribute_cpu_devices": Key((int,), 0, "'mirrored' without GPUs: split the CPU into this many logical "
                                  "devices and mirror over them (0 = one device)"),
    "sync_batch_norm": Key((bool,), True, "stage 1 under a multi-replica strategy: batch-norm statistics of the "
                           "global batch (synchronised across replicas) instead of each replica's slice"),
    "fold_frozen_backbone": Key((bool,), True, "run the frozen backbone with BN folded into its convs (same "
                                "numbers to float32 round-off, fewer ops)"),
    "jit_compile": Key((bool,), False, "compile the frozen backbone's forward pass with XLA (measured slower "
                       "than TensorFlow's oneDNN kernels on CPU; try it on GPU)"),
    "reuse_twin_features": Key((bool,), True, "doubled batches: an augmented image that was not mirrored equals "
                               "its test-preprocessed twin, so its backbone features are computed once"),
    "feature_cache": Key((bool,), False, "train the head from cached conv_final features (frozen backbone)"),
    "checkpoint_interval": Key((int,), 1000, "write a training checkpoint every N steps (and at each epoch end)"),
    "keep_checkpoints": Key((int,), 1, "training checkpoints kept (original: 1)"),
    "deterministic": Key((bool,), False, "enable TF op determinism (bit-identical resume)"),
    "strict_data": Key((bool,), False, "unreadable images are an error instead of skipped and counted"),
    "data_workers": Key((int,), 0, "parallel decode calls (0 = tf.data AUTOTUNE)"),
    "export_saved_model": Key((bool,), True, "export a SavedModel at each epoch end"),
    # ---- stage 1 (backbone training) ----
    # Method names are checked by the registry (probface_tf.methods), so a new method needs no edit here.
    "margin_loss": Key((str,), "arcface", "a stage-1 margin head of the method registry: 'arcface', 'cosface', "
                       "'scaleface', 'softmax', ..."),
    "margin_s": Key(_NUM, 64.0, "softmax scale s"),
    "margin_m": Key(_NUM, 0.5, "angular (ArcFace) or cosine (CosFace) margin m"),
    "uniform_loss_weight": Key(_NUM, 0.0, "weight of the UniformFace term on class centres (0 = off)"),
    "num_classes": Key((int, type(None)), None, "classes of the softmax head (None = from the dataset)"),
    "optimizer": Key((str,), "momentum", "'momentum' or 'adam'", ("momentum", "adam")),
    # ---- synthetic demo ----
    "synthetic": Key((dict,), None, "synthetic dataset spec: {'root', 'num_identities', 'images_per_identity', ...}"),
    "backbone_config": Key((dict,), None, "nested stage-1 recipe for 'demo' runs"),
    "head_config": Key((dict,), None, "nested head recipe overrides for 'demo' runs"),
    # ---- baselines ----
    "head_type": Key((str,), "probface", "an uncertainty method of the method registry: 'probface', 'pcnet', "
                     "'idq', 'mc_dropout', ..."),
    "pc_loss_type": Key((str,), "L2", "PCNet regression form", ("L2", "L1")),
    "idq_target": Key((str,), "soft", "IDQ target form", ("soft", "hard")),
    "idq_s": Key(_NUM, 16.0, "IDQ sigmoid scale"),
    "idq_m": Key(_NUM, 0.4, "IDQ margin"),
    "mc_dropout_rate": Key(_NUM, 0.5, "MC dropout rate"),
    "mc_samples": Key((int,), 100, "MC dropout passes T"),
}
