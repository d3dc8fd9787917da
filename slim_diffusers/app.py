"""A web demo of SLIM (Gradio), as model repositories on the Hub show themselves: ``slim app`` starts it, and a
Space's ``app.py`` imports it::

    from slim_diffusers.app import build_demo, launch

    launch(build_demo())  # the bundled toy model, offline; build_demo("owner/name") for another

An image (uploaded, or one of the bundled ones) is compressed at the chosen rate into a ``.slim`` file, which is
then decoded with and without diffusion; the page shows the file's size from its bytes, the caption it carries,
the bit allocation, and what the bundled classifier reads on the original and on the reconstruction. An
uploaded ``.slim`` file is untrusted input and gets the command line's checks and one-line errors. Requests run
through Gradio's queue one at a time: on a CPU, two decodes side by side only slow each other down.

Needs the ``app`` extra (``pip install -e ".[app]"``: gradio, and matplotlib for the bit-allocation map).
"""

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from . import cli
from .cli import ASSETS, BUNDLED_MODEL, CLIError

logger = logging.getLogger(__name__)

# an upload is coded on the server's CPU: larger images take minutes (see `slim compress` for those)
DEFAULT_MAX_IMAGE_PIXELS = 1024 * 1024
SEED = 0
KEPT_REQUESTS = 64


class AppInputError(ValueError):
    """A request the demo refuses (a mistake in what was uploaded or chosen); its message is one line."""


@dataclass
class CodedImage:
    """What one request produced: the file and what it decodes to."""

    slim_path: Path
    num_bytes: int
    bits_per_pixel: float
    caption: str
    rate: Optional[float]
    original: "object"
    without_diffusion: "object"
    with_diffusion: "object"
    bit_map_path: Path
    top5_original: Dict[str, float]
    top5_decoded: Dict[str, float]

    def summary(self) -> str:
        rate = "" if self.rate is None else f" · rate {self.rate:g}"
        caption = f"caption sent: `{self.caption}`" if self.caption else "no caption sent"
        return (f"**{self.num_bytes} bytes** · **{self.bits_per_pixel:.4f} bpp** (from the file's bytes, caption "
                f"included){rate} · {self.original.width}×{self.original.height} pixels · {caption}")


class SLIMDemo:
    """The demo's work, without the page: a loaded pipeline and classifier, and one method per button. The page
    (:func:`build_demo`) and the tests call these."""

    def __init__(self, model: str = BUNDLED_MODEL, classifier: Optional[str] = None, device: Optional[str] = None,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, work_dir: Optional[str] = None):
        self.model = cli._resolve_model(model)
        classifier_dir = Path(classifier) if classifier else (
            ASSETS / "toy" / "classifier" if model == BUNDLED_MODEL else None)
        if classifier_dir is not None and not (classifier_dir / "config.json").is_file():
            raise CLIError(f"no classifier at {classifier_dir} (a folder written by save_pretrained)")
        self.pipe = cli._load_pipeline(self.model, sender_only=False, device=device)
        self.classifier = None
        if classifier_dir is not None:
            from .evaluation.harness import Classifier

            self.classifier = Classifier.from_pretrained(str(classifier_dir), device=self.pipe.device)
        self.decode = cli._decode_settings(None, self.model)
        self.max_image_pixels = max_image_pixels
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="slim-app-"))

    # ---------------------------------------------------------------------------------------------- settings
    @property
    def rate_levels(self) -> int:
        """Trained rate levels (0 for a fixed-rate model)."""
        return self.pipe.num_rate_levels

    @property
    def default_rate(self) -> Optional[float]:
        return self.pipe.resolve_rate(None)

    @staticmethod
    def bundled_images() -> List[Path]:
        return sorted((ASSETS / "images").glob("*.png"))

    @staticmethod
    def bundled_caption(path) -> str:
        """The toy world's caption of a bundled image, named after its class ("striped_star.png" -> "a star")."""
        from .toy_world import caption_for_class_name

        return caption_for_class_name(Path(path).stem.replace("_", " "))

    # ------------------------------------------------------------------------------------------------- work
    def _request_dir(self) -> Path:
        """A fresh folder for one request's files; only the newest ``KEPT_REQUESTS`` are kept, so that a server
        running for weeks does not fill its disk (Gradio serves its own copies of what it shows)."""
        import shutil

        self.work_dir.mkdir(parents=True, exist_ok=True)
        folders = sorted((f for f in self.work_dir.iterdir() if f.is_dir()), key=lambda f: f.stat().st_mtime)
        for old in folders[:max(0, len(folders) - KEPT_REQUESTS + 1)]:
            shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.work_dir))

    def _top5(self, image) -> Dict[str, float]:
        """The classifier's five most likely classes with their probabilities (empty without a classifier)."""
        if self.classifier is None:
            return {}
        import torch

        model, processor = self.classifier.model, self.classifier.processor
        with torch.no_grad():
            inputs = processor(images=[image.convert("RGB")], return_tensors="pt").to(model.device)
            probabilities = model(**inputs).logits.float().softmax(-1)[0]
        top = probabilities.topk(min(5, probabilities.numel()))
        names = model.config.id2label
        return {names.get(int(i), str(int(i))): float(p) for p, i in zip(top.values, top.indices)}

    def _decode(self, bitstream, num_inference_steps: int, strength: float, out: Path,
                progress: Optional[Callable[[float, str], None]]):
        """Both reconstructions and the bit-allocation map of ``bitstream``."""
        import torch

        from .coding.bit_allocation import bitstream_bit_allocation, draw_bit_allocation

        def step_done(pipe, step, timestep, tensors):
            if progress is not None:
                progress(0.3 + 0.6 * (step + 1) / max(1, num_inference_steps), "denoising")
            return tensors

        # no second pixel limit here: an upload's header was checked against the decoding limit, and an image the
        # demo coded itself was checked against max_image_pixels before coding
        plain = self.pipe.decompress(bitstream, use_diffusion=False, max_pixels=bitstream.width * bitstream.height
                                     ).images[0]
        if progress is not None:
            progress(0.3, "denoising")
        diffused = self.pipe.decompress(
            bitstream, num_inference_steps=num_inference_steps, strength=strength,
            generator=torch.Generator().manual_seed(SEED), max_pixels=bitstream.width * bitstream.height,
            callback_on_step_end=step_done).images[0]
        if progress is not None:
            progress(0.9, "bit allocation")
        bits, stride = bitstream_bit_allocation(self.pipe, bitstream)
        bit_map = out / "bit_allocation.png"
        draw_bit_allocation(diffused, bits, bit_map, stride=stride,
                            title=f"{bitstream.num_bytes} bytes, {bitstream.bits_per_pixel:.4f} bpp")
        return plain, diffused, bit_map

    def _check_settings(self, num_inference_steps, strength):
        steps = int(num_inference_steps)
        if steps != num_inference_steps or steps < 1:
            raise AppInputError(f"decode steps: expected a positive whole number, got {num_inference_steps!r}")
        if not 0 < float(strength) <= 1:
            raise AppInputError(f"strength: expected a number in (0, 1], got {strength!r}")
        return steps, float(strength)

    def compress_and_decode(self, image_path, rate: Optional[float] = None, num_inference_steps: Optional[int] = None,
                            strength: Optional[float] = None, caption: str = "",
                            progress: Optional[Callable[[float, str], None]] = None) -> CodedImage:
        """Compress the image file at ``image_path`` into a ``.slim`` file, decode it both ways, classify both."""
        from PIL import Image

        if not image_path:
            raise AppInputError("no image: upload one or pick a bundled one")
        steps, strength = self._check_settings(
            self.decode["num_inference_steps"] if num_inference_steps is None else num_inference_steps,
            self.decode["strength"] if strength is None else strength)
        try:
            path = Path(cli._check_image(str(image_path)))
        except CLIError as err:
            raise AppInputError(cli._one_line("; ".join(err.messages))) from None
        with Image.open(path) as image:
            if image.width * image.height > self.max_image_pixels:
                raise AppInputError(f"{path.name}: {image.width}×{image.height} pixels; this demo codes images up to "
                                    f"{self.max_image_pixels} pixels (`slim compress` codes larger ones)")
            image.load()
        original = image.convert("RGB")
        if self.rate_levels == 0 and rate is not None:
            rate = None  # a fixed-rate model has one rate; the page hides the slider
        rate = self.pipe.resolve_rate(rate)
        if progress is not None:
            progress(0.05, "compressing")
        (bitstream,) = self.pipe.compress(original, captions=caption or "", rate=rate)
        out = self._request_dir()
        slim_path = out / f"{path.stem}.slim"
        num_bytes = bitstream.save(slim_path)
        plain, diffused, bit_map = self._decode(bitstream, steps, strength, out, progress)
        return CodedImage(slim_path, num_bytes, bitstream.bits_per_pixel, bitstream.caption, bitstream.rate, original,
                          plain, diffused, bit_map, self._top5(original), self._top5(diffused))

    def decode_file(self, slim_path, num_inference_steps: Optional[int] = None, strength: Optional[float] = None,
                    progress: Optional[Callable[[float, str], None]] = None):
        """Decode an uploaded ``.slim`` file: the command line's checks (format, decoding limit, model), then both
        reconstructions. Returns ``(summary, without diffusion, with diffusion, bit-allocation map, top-5)``."""
        if not slim_path:
            raise AppInputError("no .slim file: upload one")
        steps, strength = self._check_settings(
            self.decode["num_inference_steps"] if num_inference_steps is None else num_inference_steps,
            self.decode["strength"] if strength is None else strength)
        path = str(slim_path)
        name = Path(path).name
        try:
            bitstream = cli._check_slim_file(path)  # format and the default decoding limit, as `slim decompress`
            cli._check_fingerprints([name], [bitstream], self.pipe, self.model)
        except CLIError as err:
            # an upload lives in the server's temporary folder: its messages name the file as the user knows it
            raise AppInputError("; ".join(m.replace(path, name) for m in err.messages)) from None
        plain, diffused, bit_map = self._decode(bitstream, steps, strength, self._request_dir(), progress)
        rate = "" if bitstream.rate is None else f" · rate {bitstream.rate:g}"
        caption = f"caption `{bitstream.caption}`" if bitstream.caption else "no caption"
        summary = (f"**{name}**: **{bitstream.num_bytes} bytes** · **{bitstream.bits_per_pixel:.4f} bpp**{rate} · "
                   f"{bitstream.width}×{bitstream.height} pixels · {caption}")
        return summary, plain, diffused, bit_map, self._top5(diffused)


# ------------------------------------------------------------------------------------------------ the page
def _one_line_errors(fn):
    """Every failure reaches the page as one line (``gr.Error``), never a traceback; unexpected ones are logged
    with theirs on the server."""
    import functools

    import gradio as gr

    from .errors import SLIMBitstreamError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except CLIError as err:
            raise gr.Error(cli._one_line("; ".join(err.messages)), print_exception=False) from None
        except (AppInputError, SLIMBitstreamError) as err:
            raise gr.Error(cli._one_line(f"{type(err).__name__}: {err}" if isinstance(err, SLIMBitstreamError)
                                         else err), print_exception=False) from None
        except Exception as err:  # noqa: BLE001 — the page's last word: one line; the traceback goes to the log
            logger.exception("request failed")
            raise gr.Error(cli._one_line(f"{type(err).__name__}: {err}"), print_exception=False) from None

    return wrapper


def offline_theme():
    """Gradio's default look with the system's fonts: the default theme fetches Google fonts, which a machine
    without a network (or a browser behind one) waits for."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def build_demo(model: str = BUNDLED_MODEL, classifier: Optional[str] = None, device: Optional[str] = None,
               max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, demo: Optional[SLIMDemo] = None):
    """The Gradio page of :class:`SLIMDemo` (loaded here unless given), queued one request at a time."""
    import gradio as gr

    demo = demo or SLIMDemo(model, classifier=classifier, device=device, max_image_pixels=max_image_pixels)
    levels = demo.rate_levels
    default_rate = demo.default_rate
    steps0, strength0 = demo.decode["num_inference_steps"], demo.decode["strength"]

    def progress_of(tracker):
        return lambda fraction, what: tracker(fraction, desc=what)

    @_one_line_errors
    def compress(image_path, rate, steps, strength, caption, progress=gr.Progress()):
        coded = demo.compress_and_decode(image_path, rate if levels else None, steps, strength, caption or "",
                                         progress=progress_of(progress))
        return (coded.summary(), coded.num_bytes, round(coded.bits_per_pixel, 6), coded.caption, str(coded.slim_path),
                [(coded.original, "original"), (coded.without_diffusion, "decoded without diffusion"),
                 (coded.with_diffusion, "decoded with diffusion")],
                coded.with_diffusion,
                str(coded.bit_map_path), coded.top5_original, coded.top5_decoded)

    @_one_line_errors
    def decode(slim_file, steps, strength, progress=gr.Progress()):
        summary, plain, diffused, bit_map, top5 = demo.decode_file(slim_file, steps, strength,
                                                                   progress=progress_of(progress))
        return summary, [(plain, "decoded without diffusion"), (diffused, "decoded with diffusion")], str(bit_map), top5

    name = demo.model.name
    # delete_cache: Gradio's copies of uploads and results older than an hour go, checked every hour
    with gr.Blocks(title="SLIM: image compression for machines", delete_cache=(3600, 3600)) as page:
        gr.Markdown(
            f"# SLIM: image compression for machines\n"
            f"Compress an image into a `.slim` file of a few hundred bytes that a classifier at the other end reads "
            f"well, then decode it with the diffusion decoder. Model: `{name}`"
            + (f" ({levels} rate levels: 0 spends the fewest bits)" if levels else " (one fixed rate)") + ".")
        with gr.Tab("Compress an image"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(type="filepath", label="Image (upload, or pick a bundled one below)",
                                     image_mode="RGB", sources=["upload"], elem_id="image")
                    caption = gr.Textbox(label="Caption sent with the image (optional)", elem_id="caption")
                    rate = gr.Slider(0, max(levels - 1, 1), value=default_rate if levels else 0, step=1,
                                     label="Rate level (0 = the fewest bits)", visible=bool(levels), elem_id="rate")
                    steps = gr.Slider(1, 50, value=steps0, step=1, label="Decode steps", elem_id="steps")
                    strength = gr.Slider(0.05, 1.0, value=strength0, step=0.05,
                                         label="Strength (1 = from noise; less starts from the transmitted latent)",
                                         elem_id="strength")
                    run = gr.Button("Compress and decode", variant="primary", elem_id="run")
                    gr.Examples([[str(p), demo.bundled_caption(p)] for p in demo.bundled_images()], [image, caption],
                                label="Bundled images", examples_per_page=5)
                with gr.Column():
                    summary = gr.Markdown(elem_id="summary")
                    with gr.Row():
                        num_bytes = gr.Number(label=".slim bytes", precision=0, interactive=False, elem_id="bytes")
                        bpp = gr.Number(label="bits per pixel", interactive=False, elem_id="bpp")
                        sent = gr.Textbox(label="Caption in the file", interactive=False, elem_id="sent")
                    gallery = gr.Gallery(label="Original · without diffusion · with diffusion", columns=3,
                                         object_fit="contain", height=280, elem_id="gallery")
                    with gr.Row():
                        top_original = gr.Label(num_top_classes=5, label="Classifier on the original")
                        top_decoded = gr.Label(num_top_classes=5, label="Classifier on the reconstruction")
                    with gr.Row():
                        bit_map = gr.Image(label="Bit allocation", type="filepath", interactive=False, elem_id="bitmap")
                        with gr.Column():
                            decoded = gr.Image(label="Decoded with diffusion", type="pil", interactive=False,
                                               elem_id="decoded")
                            download = gr.File(label=".slim file", interactive=False, elem_id="download")
            run.click(compress, [image, rate, steps, strength, caption],
                      [summary, num_bytes, bpp, sent, download, gallery, decoded, bit_map, top_original, top_decoded],
                      api_name="compress")
        with gr.Tab("Decode a .slim file"):
            with gr.Row():
                with gr.Column():
                    slim_file = gr.File(label=".slim file", file_types=[".slim"], type="filepath", elem_id="slim_file")
                    steps2 = gr.Slider(1, 50, value=steps0, step=1, label="Decode steps")
                    strength2 = gr.Slider(0.05, 1.0, value=strength0, step=0.05, label="Strength")
                    run2 = gr.Button("Decode", variant="primary", elem_id="run_decode")
                with gr.Column():
                    summary2 = gr.Markdown()
                    gallery2 = gr.Gallery(label="Without diffusion · with diffusion", columns=2, object_fit="contain",
                                          height="auto")
                    bit_map2 = gr.Image(label="Bit allocation", type="filepath", interactive=False)
                    top2 = gr.Label(num_top_classes=5, label="Classifier on the reconstruction")
            run2.click(decode, [slim_file, steps2, strength2], [summary2, gallery2, bit_map2, top2], api_name="decode")
    # one request at a time: on a CPU, two decodes side by side only slow each other down
    return page.queue(default_concurrency_limit=1, max_size=16)


def launch(page, host: str = "127.0.0.1", port: Optional[int] = None, **kwargs):
    """Serve the page (blocking unless ``prevent_thread_lock=True``) with fonts that need no network."""
    # show_error: a failure outside the demo's own checks (gradio's input processing) shows its message too
    return page.launch(server_name=host, server_port=port, theme=offline_theme(), ssr_mode=False, show_error=True,
                       **kwargs)
