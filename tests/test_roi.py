import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from slim_diffusers import toy_world
from slim_diffusers.training.losses import resize_mask
from slim_diffusers.semantics.roi import (
    RoIMaskSizeError,
    RoITargetLayerError,
    check_mask_matches_image,
    classifier_input_size,
    classifier_inputs,
    compute_roi_masks,
    default_target_layer,
    resize_to_latent,
    roi_mask_to_array,
    roi_mask_to_image,
)
from slim_diffusers.utils.image_utils import to_rgb_tensor
from slim_diffusers.testing import tiny_classifier

SIZE = 96
# same outline, same caption ("a circle"): only the markings on the target object decide between the two
CLASSES = (toy_world.CLASS_NAMES.index("plain circle"), toy_world.CLASS_NAMES.index("striped circle"))


def toy_samples(n, seed):
    """Toy-world images of two classes; the target (the only class evidence) is at a random place among
    distractors."""
    samples = [toy_world.render(CLASSES[i % 2], np.random.default_rng([seed, i]), SIZE) for i in range(n)]
    return samples, [i % 2 for i in range(n)]


@pytest.fixture(scope="module")
def trained():
    """A tiny ResNet trained for 200 CPU steps until it tells the two classes apart (fine markings on a tenth
    of the frame take that many images and steps, and a decaying learning rate to settle)."""
    torch.manual_seed(0)
    model, processor = tiny_classifier(num_labels=2, seed=0, image_size=SIZE)
    samples, labels = toy_samples(512, seed=1)
    x = classifier_inputs([to_rgb_tensor(s.image) for s in samples], processor)
    y = torch.tensor(labels)
    steps = 200
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is as fast, and does not stall on a busy machine
    model.train()
    try:
        for _ in range(steps):
            idx = torch.randint(0, len(x), (32,), generator=gen)
            loss = F.cross_entropy(model(pixel_values=x[idx]).logits, y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    finally:
        torch.set_num_threads(threads)
    model.eval().requires_grad_(False)
    return model, processor


def region_scores(masks, samples):
    """Mean IoU of (mask ≥ 0.5) with the true object region, and the share of mask mass inside it."""
    ious, mass = [], []
    for mask, sample in zip(masks[:, 0].numpy(), samples):
        cam, region = mask >= 0.5, sample.object_mask > 0.5
        ious.append((cam & region).sum() / (cam | region).sum())
        mass.append((mask * region).sum() / mask.sum())
    return float(np.mean(ious)), float(np.mean(mass))


def test_grad_cam_mask_lies_on_the_object_that_decides_the_class(trained):
    model, processor = trained
    samples, labels = toy_samples(20, seed=2)
    with torch.no_grad():
        logits = model(pixel_values=classifier_inputs([to_rgb_tensor(s.image) for s in samples], processor)).logits
    assert (logits.argmax(-1) == torch.tensor(labels)).float().mean() >= 0.9  # the classifier did learn the task

    out = compute_roi_masks(model, processor, [s.image for s in samples], labels)
    assert out.masks.shape == (20, 1, SIZE, SIZE) and out.target_labels == labels
    iou, mass = region_scores(out.masks, samples)
    # the target covers about 10 % of the image, a few cells of the classifier's 6×6 feature map
    assert iou >= 0.3
    # the map puts several times the target's share of the image on it
    assert mass >= 0.25

    untrained, _ = tiny_classifier(num_labels=2, seed=0, image_size=SIZE)
    iou_untrained, _ = region_scores(compute_roi_masks(untrained, processor, [s.image for s in samples], labels).masks, samples)
    assert iou_untrained < iou - 0.2  # the localisation comes from what the classifier learned


def test_map_explains_the_asked_class(trained):
    model, processor = trained
    samples, labels = toy_samples(4, seed=3)
    images = [s.image for s in samples]
    own = compute_roi_masks(model, processor, images, labels)
    other = compute_roi_masks(model, processor, images, [1 - y for y in labels])
    predicted = compute_roi_masks(model, processor, images)  # no labels: the top prediction
    assert other.target_labels == [1 - y for y in labels]
    assert predicted.target_labels == predicted.predicted_labels == labels
    assert torch.equal(predicted.masks, own.masks)
    assert (own.masks - other.masks).abs().amax() > 0.2
    mixed = compute_roi_masks(model, processor, images, [None, 1 - labels[1], -1, labels[3]])
    assert mixed.target_labels == [labels[0], 1 - labels[1], labels[2], labels[3]]


def test_soft_masks_at_image_size_batched_like_single_images():
    model, processor = tiny_classifier(seed=0, image_size=64)
    rng = np.random.default_rng(0)
    images = [
        PIL.Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)),
        PIL.Image.fromarray(rng.integers(0, 256, (33, 21), dtype=np.uint8), mode="L"),
        rng.random((24, 24, 3)).astype(np.float32),
        torch.rand(3, 17, 30),
    ]
    model.requires_grad_(False)
    out = compute_roi_masks(model, processor, images, batch_size=3)
    assert [tuple(m.shape) for m in out.masks] == [(1, 40, 56), (1, 33, 21), (1, 24, 24), (1, 17, 30)]
    for mask in out.masks:
        assert mask.min() >= 0 and mask.max() <= 1 and mask.max() == pytest.approx(1.0, abs=0.05)
        assert len(torch.unique(mask)) > 10  # soft, not a binary cut-out
    for i, image in enumerate(images):
        single = compute_roi_masks(model, processor, image)
        torch.testing.assert_close(single.masks[0], out.masks[i], atol=1e-5, rtol=0)
        assert single.predicted_labels == [out.predicted_labels[i]]
    assert all(p.grad is None for p in model.parameters())  # frozen model: no parameter gradients made

    np_out = compute_roi_masks(model, processor, [images[2], images[2]], output_type="np")
    assert np_out.masks.shape == (2, 24, 24) and np_out.masks.dtype == np.float32
    pil_out = compute_roi_masks(model, processor, images[:2], output_type="pil")
    assert [(m.mode, m.size) for m in pil_out.masks] == [("L", (56, 40)), ("L", (21, 33))]
    np.testing.assert_allclose(roi_mask_to_array(pil_out.masks[0]), out.masks[0][0].numpy(), atol=0.5 / 255 + 1e-6)


def test_classifier_in_train_mode_is_restored_and_batch_norm_is_not_mixed():
    model, processor = tiny_classifier(seed=1, image_size=32)
    images = [torch.rand(3, 32, 32) for _ in range(3)]
    model.train()
    batch = compute_roi_masks(model, processor, images).masks
    assert model.training
    single = compute_roi_masks(model, processor, images[1]).masks
    torch.testing.assert_close(single[0], batch[1], atol=1e-5, rtol=0)


def test_resize_to_latent_averages_the_pixels_of_each_latent_position():
    mask = torch.zeros(1, 1, 16, 24)
    mask[..., :8, :8] = 1
    mask[..., 8:, 20:] = 0.5
    latent = resize_to_latent(mask, vae_scale_factor=8)
    assert latent.shape == (1, 1, 2, 3)
    torch.testing.assert_close(latent[0, 0], torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.25]]))
    torch.testing.assert_close(latent, resize_mask(mask, (2, 3)))  # same as the loss module's for stride multiples
    # sizes off the stride: padded like the pipeline pads the image (edge replicated)
    odd = resize_to_latent(torch.ones(2, 13, 21), vae_scale_factor=8)
    assert odd.shape == (2, 1, 2, 3) and torch.equal(odd, torch.ones_like(odd))
    assert resize_to_latent([torch.ones(1, 9, 9), torch.zeros(1, 9, 9)], 8).shape == (2, 1, 2, 2)
    with pytest.raises(RoIMaskSizeError):
        resize_to_latent([torch.ones(1, 9, 9), torch.ones(1, 8, 9)])


def test_mask_storage_round_trip():
    rng = np.random.default_rng(0)
    mask = rng.random((20, 30)).astype(np.float32)
    stored = roi_mask_to_image(mask)
    assert stored.mode == "L" and stored.size == (30, 20)
    np.testing.assert_allclose(roi_mask_to_array(stored), mask, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(roi_mask_to_array(PIL.Image.fromarray(mask)), mask)  # mode "F"
    np.testing.assert_array_equal(roi_mask_to_array(torch.from_numpy(mask)[None]), mask)
    binary = PIL.Image.fromarray(mask > 0.5)
    np.testing.assert_array_equal(roi_mask_to_array(binary), (mask > 0.5).astype(np.float32))
    assert roi_mask_to_array(np.full((3, 3), 7.0)).max() == 1.0  # clipped to [0, 1]
    with pytest.raises(ValueError, match="single-channel"):
        roi_mask_to_array(PIL.Image.new("RGB", (4, 4)))


def test_named_errors_for_bad_input():
    model, processor = tiny_classifier(seed=0, image_size=32)
    image = torch.rand(3, 32, 32)
    with pytest.raises(RoIMaskSizeError, match="16×32 but its image is 32×32"):
        check_mask_matches_image(np.zeros((32, 16)), image)
    check_mask_matches_image(PIL.Image.new("L", (32, 32)), image)
    with pytest.raises(ValueError, match="outside the classifier's 10 classes"):
        compute_roi_masks(model, processor, image, labels=[10])
    with pytest.raises(ValueError, match="2 labels for 1 images"):
        compute_roi_masks(model, processor, image, labels=[1, 2])
    with pytest.raises(ValueError, match="values in \\[0, 1\\]"):
        compute_roi_masks(model, processor, image * 3)
    with pytest.raises(RoITargetLayerError, match="feature map"):
        compute_roi_masks(model, processor, image, target_layer=model.classifier)
    assert default_target_layer(model) is model.resnet.encoder.stages[-1]


def test_classifier_input_size_from_any_processor():
    from transformers import CLIPImageProcessor, ConvNextImageProcessor, ViTImageProcessor

    assert classifier_input_size(ConvNextImageProcessor(size={"shortest_edge": 40})) == (40, 40)  # ResNet-50's kind
    assert classifier_input_size(ViTImageProcessor(size={"height": 24, "width": 32})) == (24, 32)
    clip = CLIPImageProcessor(size={"shortest_edge": 50}, crop_size={"height": 36, "width": 36})
    assert classifier_input_size(clip) == (36, 36)
    x = classifier_inputs([torch.ones(3, 10, 70)], ConvNextImageProcessor(size={"shortest_edge": 40},
                                                                         image_mean=[0.5] * 3, image_std=[0.25] * 3))
    assert x.shape == (1, 3, 40, 40)  # the whole image, squeezed, not a centre crop
    torch.testing.assert_close(x, torch.full_like(x, 2.0))
