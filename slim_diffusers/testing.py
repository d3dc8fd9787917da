"""Tiny, seeded, offline components for tests, docs, benchmarks and CPU smoke runs.

This is the one factory of test-sized models in the project: nothing here touches the network, every
component is built from a config written in code and randomly initialised with a fixed seed.

Command line::

    python -m slim_diffusers.testing save-tiny-codec OUT_DIR
    python -m slim_diffusers.testing save-tiny-pipeline OUT_DIR [--prediction-type v_prediction] [--with-roi-captioner]
                                                          [--num-rate-levels L]
    python -m slim_diffusers.testing save-tiny-roi-models OUT_DIR      # OUT_DIR/classifier, OUT_DIR/captioner
    python -m slim_diffusers.testing save-tiny-dataset OUT_DIR --num_images N
"""

import argparse
import os
import sys
from typing import Optional, Sequence, Tuple

import torch

from .models.compressor import SLIMCompressor
from .models.decompressor import SLIMDecompressor

TINY_CODEC_CONFIG = dict(
    latent_channels=4,
    hidden_channels=16,
    latent_codec_channels=32,
    hyper_channels=16,
    num_res_blocks=1,
)
TINY_DECOMPRESSOR_EXTRA = dict(groups=(4, 4, 8, 16), channel_context_channels=(16, 16))


def tiny_codec(seed: int = 0, num_rate_levels: int = 0) -> Tuple[SLIMCompressor, SLIMDecompressor]:
    """A tiny compressor/decompressor pair in eval mode with CDF tables built, ready to code. ``num_rate_levels``
    makes it variable-rate (its other weights are those of the fixed-rate pair of the same seed)."""
    torch.manual_seed(seed)
    rates = {"num_rate_levels": num_rate_levels} if num_rate_levels else {}
    compressor = SLIMCompressor(num_downsamples=2, **TINY_CODEC_CONFIG, **rates)
    decompressor = SLIMDecompressor(num_upsamples=2, **TINY_CODEC_CONFIG, **TINY_DECOMPRESSOR_EXTRA, **rates)
    compressor.eval()
    decompressor.eval()
    decompressor.update(force=True)
    return compressor, decompressor


def exact_codec(
    compressor: SLIMCompressor, decompressor: SLIMDecompressor, height: int = 16, width: int = 24, num_latents: int = 4
) -> SLIMDecompressor:
    """The exact-entropy-model copy of ``decompressor`` (post-training conversion), calibrated on seeded
    latent-like tensors of ``height × width`` (:func:`structured_latents`, seeds 1000…)."""
    from .coding.latents import convert_to_exact_entropy_model

    latents = [structured_latents(1, height, width, seed=1000 + i) for i in range(num_latents)]
    return convert_to_exact_entropy_model(compressor, decompressor, latents)


def tiny_exact_codec(seed: int = 0) -> Tuple[SLIMCompressor, SLIMDecompressor]:
    """:func:`tiny_codec` with its entropy model converted to an exact integer one (:func:`exact_codec`)."""
    compressor, decompressor = tiny_codec(seed)
    return compressor, exact_codec(compressor, decompressor)


def tiny_tokenizer(model_max_length: int = 16):
    """A CLIP tokenizer built in code: byte-level characters, no merges (every character a token)."""
    from transformers import CLIPTokenizer

    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = [chr(b) for b in printable], 0
    for b in range(256):  # GPT-2/CLIP byte-to-unicode mapping for the remaining bytes
        if b not in printable:
            chars.append(chr(256 + extra))
            extra += 1
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in chars:
            vocab[c + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_text_encoder(tokenizer, hidden_size: int = 32, intermediate_size: int = 37, seed: int = 0):
    """A small CLIP text encoder (2 layers, 4 heads) over ``tokenizer``'s vocabulary and length, seeded."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
            projection_dim=hidden_size,
        )
    )


def tiny_sd_components(seed: int = 0, prediction_type: str = "epsilon") -> dict:
    """Tiny Stable-Diffusion-shaped components: VAE (stride 8, 4 latent channels), UNet, CLIP, DDIM."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
        use_linear_projection=True,
    )
    tokenizer = tiny_tokenizer()
    text_encoder = tiny_text_encoder(tokenizer, seed=seed + 2)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type=prediction_type,
    )
    return dict(vae=vae.eval(), unet=unet.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, scheduler=scheduler)


def _scaled(channels: int, width_scale: float, multiple: int) -> int:
    """``channels × width_scale`` rounded to a positive multiple of ``multiple`` (exact at scale 1)."""
    if width_scale == 1:
        return channels
    return max(multiple, int(round(channels * width_scale / multiple)) * multiple)


def sd21_base_components(
    width_scale: float = 1.0, text_layers: int = 23, seed: int = 0, prediction_type: str = "epsilon"
) -> dict:
    """Stable Diffusion 2.1-base's architecture built from configs written here, randomly initialised (seeded): what
    cost and memory measurements need, since they do not depend on the weights and nothing is downloaded.

    At ``width_scale=1`` and ``text_layers=23`` the VAE, UNet (``block_out_channels`` 320/640/1280/1280, 5/10/20/20
    heads of 64 channels, linear projections, cross-attention on 1024 channels) and the OpenCLIP-H text encoder
    (1024 hidden, 16 heads, 23 layers) have SD 2.1-base's configs. A smaller ``width_scale`` narrows every block
    (UNet and text encoder in whole 64-channel heads where the width allows, GroupNorm in 8 groups) while
    keeping the layout — block types, depths, attention, linear projections — so that the code paths of the full
    size run at CI size. The tokenizer is :func:`tiny_tokenizer` padded to CLIP's 77 tokens (the cost is the
    sequence length, not the vocabulary); the scheduler is DDIM with SD's betas.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if width_scale <= 0 or width_scale > 1:
        raise ValueError(f"width_scale must be in (0, 1], got {width_scale}")
    groups = 32 if width_scale == 1 else 8

    def unet_width(c):  # whole heads of 64 channels when the width allows
        return _scaled(c, width_scale, 64 if c * width_scale >= 64 else 8)

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=768, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=tuple(_scaled(c, width_scale, 8) for c in (128, 256, 512, 512)),
        norm_num_groups=groups, scaling_factor=0.18215,
    )
    text_hidden = 64 * max(1, int(round(16 * width_scale)))
    widths = tuple(unet_width(c) for c in (320, 640, 1280, 1280))
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=widths,
        attention_head_dim=tuple(max(1, c // 64) for c in widths),  # diffusers' name for the number of heads here
        cross_attention_dim=text_hidden, use_linear_projection=True, norm_num_groups=groups,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    tokenizer = tiny_tokenizer(model_max_length=77)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=text_hidden, intermediate_size=4 * text_hidden, num_hidden_layers=text_layers,
        num_attention_heads=text_hidden // 64, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, prediction_type=prediction_type)
    return dict(vae=vae.eval(), unet=unet.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, scheduler=scheduler)


def sd21_base_codec(width_scale: float = 1.0, seed: int = 0) -> Tuple[SLIMCompressor, SLIMDecompressor]:
    """SLIM's compressor and decompressor at their default size (``width_scale=1``), or every width scaled down as
    :func:`sd21_base_components` does (ELIC's channel groups in proportion); the decompressor's CDF tables built."""
    torch.manual_seed(seed)
    if width_scale == 1:
        compressor, decompressor = SLIMCompressor(), SLIMDecompressor()
    else:
        groups = tuple(max(2, int(round(g * width_scale))) for g in (16, 16, 32, 64, 192))
        config = dict(hidden_channels=_scaled(128, width_scale, 8), latent_codec_channels=sum(groups),
                      hyper_channels=_scaled(192, width_scale, 8))
        compressor = SLIMCompressor(**config)
        decompressor = SLIMDecompressor(**config, groups=groups,
                                        channel_context_channels=(_scaled(128, width_scale, 8), _scaled(96, width_scale, 8)))
    decompressor.update(force=True)
    return compressor, decompressor


def tiny_pipeline(
    seed: int = 0, prediction_type: str = "epsilon", control_scale: float = 0.02, with_roi_captioner: bool = False,
    num_rate_levels: int = 0,
):
    """A tiny, seeded, offline :class:`~slim_diffusers.SLIMPipeline`.

    The control module starts from the UNet (``from_unet``) with its zero convolutions set to small
    seeded values (``control_scale``), so that ẑ and the caption visibly steer the output, as they would
    after training; ``control_scale=0`` keeps the untrained zero initialisation. ``with_roi_captioner``
    adds the optional RoI classifier (:func:`tiny_classifier`) and captioner (:func:`tiny_blip2`), so that
    ``compress()`` writes RoI-focused captions when none are given. ``num_rate_levels`` makes the codec
    variable-rate (:func:`tiny_codec`).
    """
    from .models.controlnet import SLIMControlNet
    from .pipelines.pipeline_slim import SLIMPipeline

    sd = tiny_sd_components(seed, prediction_type)
    controlnet = SLIMControlNet.from_unet(sd["unet"], conditioning_channels=4)
    if control_scale:
        gen = torch.Generator().manual_seed(seed + 3)
        with torch.no_grad():
            for name, param in controlnet.named_parameters():
                if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")) or name.endswith("conv_out.weight"):
                    param.copy_(torch.randn(param.shape, generator=gen) * control_scale)
    compressor, decompressor = tiny_codec(seed, num_rate_levels)
    extra = {}
    if with_roi_captioner:
        extra["roi_classifier"], extra["roi_image_processor"] = tiny_classifier(seed=seed)
        extra["captioner"], extra["caption_processor"] = tiny_blip2(seed=seed)
    return SLIMPipeline(controlnet=controlnet.eval(), compressor=compressor, decompressor=decompressor, **sd, **extra)


def tiny_classifier(num_labels: int = 10, seed: int = 0, image_size: int = 64, id2label: Optional[dict] = None):
    """A tiny transformers image classifier (ResNet) and its image processor, randomly initialised.

    It is the same kind of model as the real system's ``microsoft/resnet-50`` (an
    ``AutoModelForImageClassification`` with an ``AutoImageProcessor``), so Grad-CAM, the training task loss
    and the evaluation harness run on it unchanged. Labels default to the toy world's class names when
    ``num_labels`` matches them.
    """
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    from .toy_world import CLASS_NAMES

    if id2label is None:
        names = CLASS_NAMES if num_labels == len(CLASS_NAMES) else [f"class_{i}" for i in range(num_labels)]
        id2label = dict(enumerate(names))
    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=3,
        embedding_size=16,
        hidden_sizes=[16, 32, 64],
        depths=[1, 1, 1],
        layer_type="basic",
        num_labels=num_labels,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    processor = ViTImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    return ResNetForImageClassification(config).eval(), processor


def tiny_caption_tokenizer(model_max_length: int = 64):
    """An OPT-style (GPT-2 byte-level BPE) tokenizer built in code for the tiny BLIP-2.

    Its vocabulary is the lowercase letters and the word separator, without merges: every letter is a
    token, so a random captioner writes letter strings rather than undecodable bytes. Other characters
    are dropped. ``</s>`` is both BOS and EOS, as in OPT.
    """
    import string

    from transformers import GPT2Tokenizer

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "\u0120": 3}  # "Ġ" marks a leading space in byte-level BPE
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
    return GPT2Tokenizer(
        vocab=vocab, merges=[], unk_token="<unk>", bos_token="</s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=model_max_length,
    )


def tiny_blip2(seed: int = 0, image_size: int = 32, num_query_tokens: int = 4):
    """A tiny ``Blip2ForConditionalGeneration`` (ViT + Q-Former + OPT) and its ``Blip2Processor``, in code.

    The same classes as ``Salesforce/blip2-opt-2.7b``, so :mod:`slim_diffusers.semantics.captioning` and the dataset
    builder run on it unchanged. Weights are drawn with a large initialiser range (0.5) so that the random
    model's greedy captions depend on the image (a small one writes the same string for every input).
    """
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    tokenizer = tiny_caption_tokenizer()
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        num_query_tokens=num_query_tokens,
    )
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            encoder_hidden_size=32, vocab_size=len(tokenizer)),
        text_config=dict(model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                         word_embed_proj_dim=32, vocab_size=len(tokenizer), max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=1, pad_token_id=0, init_std=0.5),
        num_query_tokens=num_query_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    return Blip2ForConditionalGeneration(config).eval(), processor


def structured_latents(
    batch: int = 1, height: int = 16, width: int = 24, seed: int = 0, image_dir: Optional[str] = None
) -> torch.Tensor:
    """Latent-like tensors with real image structure (not white noise), scaled like SD latents (std ≈ 1).

    Made from photographs when ``image_dir`` holds PNGs (the Kodak set in ``../shared/data/kodak``),
    else from smooth random fields.
    """
    gen = torch.Generator().manual_seed(seed)
    images = []
    if image_dir is not None and os.path.isdir(image_dir):
        import numpy as np
        from PIL import Image

        names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(".png"))
        for i in range(batch):
            img = Image.open(os.path.join(image_dir, names[(seed + i) % len(names)])).convert("RGB")
            img = img.resize((width, height), Image.BICUBIC)
            rgb = torch.from_numpy(np.array(img)).float().permute(2, 0, 1) / 127.5 - 1
            images.append(torch.cat([rgb, rgb.mean(0, keepdim=True) - rgb[2:3]]))
    else:
        for _ in range(batch):
            coarse = torch.randn(4, max(height // 4, 1), max(width // 4, 1), generator=gen)
            images.append(torch.nn.functional.interpolate(coarse[None], (height, width), mode="bicubic")[0])
    x = torch.stack(images)
    return x / x.std().clamp_min(1e-6)


def _save_tiny_codec(out_dir: str, seed: int) -> None:
    compressor, decompressor = tiny_codec(seed)
    compressor.save_pretrained(os.path.join(out_dir, "compressor"))
    decompressor.save_pretrained(os.path.join(out_dir, "decompressor"))


def _save_tiny_roi_models(out_dir: str, seed: int, image_size: int = 64) -> None:
    from .toy_world import CLASS_NAMES

    # the toy world's classes, so that stage 2's task loss and Grad-CAM can take the tiny datasets' labels
    classifier, image_processor = tiny_classifier(num_labels=len(CLASS_NAMES), seed=seed, image_size=image_size)
    classifier.save_pretrained(os.path.join(out_dir, "classifier"))
    image_processor.save_pretrained(os.path.join(out_dir, "classifier"))
    captioner, processor = tiny_blip2(seed=seed)
    captioner.save_pretrained(os.path.join(out_dir, "captioner"))
    processor.save_pretrained(os.path.join(out_dir, "captioner"))


def save_tiny_dataset(out_dir: str, num_images: int = 16, seed: int = 0, image_size: int = 64, batch_size: int = 8):
    """A small training dataset (``image``, ``label``, ``roi_mask``, ``caption``) written with ``save_to_disk``.

    Built by :func:`slim_diffusers.training.dataset_builder.build_dataset` — the machinery of
    ``training/prepare_dataset.py`` — from toy-world images (:mod:`slim_diffusers.toy_world`), with
    :func:`tiny_classifier` for the Grad-CAM masks and :func:`tiny_blip2` for the captions. The models are
    random, so masks and captions carry no meaning; the columns, formats and code path are the real ones.
    """
    from . import toy_world
    from .training.dataset_builder import BuildConfig, build_dataset, make_annotator, resolve_cam_target

    source = toy_world.as_dataset(num_images, seed=seed, size=image_size).select_columns(["image", "label"])
    classifier, image_processor = tiny_classifier(num_labels=len(toy_world.CLASS_NAMES), seed=seed, image_size=image_size)
    captioner, processor = tiny_blip2(seed=seed)
    cam_target = resolve_cam_target("auto", list(toy_world.CLASS_NAMES), classifier)
    config = BuildConfig(
        source=f"toy_world(seed={seed}, size={image_size})",
        num_rows=len(source),
        seed=seed,
        classifier=f"tiny_classifier(seed={seed})",
        captioner=f"tiny_blip2(seed={seed})",
        cam_target=cam_target,
    )
    annotate = make_annotator(classifier, image_processor, captioner, processor, use_labels=cam_target == "label",
                              max_caption_tokens=config.max_caption_tokens)
    return build_dataset(source, out_dir, config, annotate, batch_size=batch_size)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slim_diffusers.testing", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("save-tiny-codec", help="write a tiny compressor/ and decompressor/ with save_pretrained")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("save-tiny-pipeline", help="write a tiny SLIMPipeline with save_pretrained")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"])
    p.add_argument("--with-roi-captioner", action="store_true", help="include the tiny RoI classifier and captioner")
    p.add_argument("--num-rate-levels", type=int, default=0, help="a variable-rate codec with this many rate levels")
    p = sub.add_parser("save-tiny-roi-models",
                       help="write a tiny classifier/ and captioner/ with save_pretrained (for training/prepare_dataset.py)")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", "--image_size", type=int, default=64, help="the classifier's input size")
    p = sub.add_parser("save-tiny-dataset", help="write a small training dataset (save_to_disk) built with tiny models")
    p.add_argument("out_dir")
    p.add_argument("--num_images", "--num-images", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image_size", "--image-size", type=int, default=64)
    p.add_argument("--batch_size", "--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    if args.command == "save-tiny-codec":
        _save_tiny_codec(args.out_dir, args.seed)
    elif args.command == "save-tiny-pipeline":
        tiny_pipeline(args.seed, args.prediction_type, with_roi_captioner=args.with_roi_captioner,
                      num_rate_levels=args.num_rate_levels).save_pretrained(args.out_dir)
    elif args.command == "save-tiny-roi-models":
        _save_tiny_roi_models(args.out_dir, args.seed, args.image_size)
    elif args.command == "save-tiny-dataset":
        if args.num_images < 1:
            parser.error("--num_images must be ≥ 1")
        save_tiny_dataset(args.out_dir, args.num_images, args.seed, args.image_size, args.batch_size)
    print(f"wrote {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
