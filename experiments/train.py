r"""Train PANet (and optionally evaluate the test fold when done).

    python experiments/train.py --config=configs/synthetic.py --workdir=/tmp/panet_synthetic
    python experiments/train.py --config=configs/pascal5i.py:fold=0,shot=1 --workdir=runs/p0s1

Any config key can be overridden, e.g. ``--config.train.steps=100``; unknown keys are an
error. Re-running with the same ``--workdir`` resumes its latest checkpoint.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags, logging
from ml_collections import config_flags

from panet_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/synthetic.py[:arg].", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, config.json and TensorBoard.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:

    from panet_jax.train import trainer

    result = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    scalars = {k: v for k, v in result.items() if isinstance(v, bool | int | float | str)}
    logging.info("final: %s", json.dumps(scalars, sort_keys=True))


if __name__ == "__main__":
    cli.run(main)
