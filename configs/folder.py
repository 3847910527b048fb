"""PANet on your own folder of images and masks (prepared with ``experiments/prepare_data.py
--dataset=folder``; see docs/own_data.md).

    --config=configs/folder.py:path=/data/my_pets[,fold=1,shot=5,way=2,encoder=resnet50]
    --config=configs/folder.py:name=my_pets      (the name the folder was prepared under)

``path`` names the prepared dataset after the folder, as preparation does (``/data/My Pets``
-> ``my_pets``); the raw folder is not read again. The rest is the PANet recipe (ImageNet
VGG-16, 417 px, 30k SGD steps; override with ``--config.train.steps=...`` etc.), tested with
per-episode seeds (``eval.sampler='stateless'``: the official PANet code has no episodes of
your classes to replay), every protocol option included (``--config.eval.protocol=hsnet``,
``eval.support_annotation``, ``eval.original_size``, ``eval.min_object_pixels``).
``:runlocal`` shrinks everything to a smoke test (tiny model, 33 px, a few steps).
"""

from panet_jax.config import apply_arg, base_config, parse_arg, with_imagenet_weights


def get_config(arg: str | None = None):
    from panet_jax.data.folder_classes import dataset_name

    args = parse_arg(arg)
    c = base_config()
    c.data.dataset = "folder"
    if args.get("path"):
        c.data.builder_config = dataset_name(str(args["path"]))
    c.eval.sampler = "stateless"
    c = with_imagenet_weights(apply_arg(c, arg))
    if args.get("runlocal"):
        c.data.image_size = (33, 33)
        c.model.width = 1 / 16
        c.model.pretrained = ""
        c.train.steps = 4
        c.train.per_device_batch = 1
        c.train.log_every = 2
        c.train.image_every = 2
        c.train.checkpoint_every = 2
        c.eval.runs = 1
        c.eval.episodes = 8
    return c
