import pytest

from slim_diffusers import toy_world
from slim_diffusers.testing import tiny_classifier, tiny_pipeline

NUM_IMAGES = 4


@pytest.fixture(scope="session")
def eval_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("slim_model")
    tiny_pipeline(seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def eval_classifier_dir(tmp_path_factory):
    """A tiny classifier saved as a user would save a fine-tuned one: model and image processor in one folder."""
    path = tmp_path_factory.mktemp("classifier")
    model, processor = tiny_classifier(num_labels=len(toy_world.CLASS_NAMES), seed=0, image_size=64)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def eval_dataset_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy_dataset")
    toy_world.as_dataset(NUM_IMAGES, seed=7, size=64).save_to_disk(str(path))
    return path
