import re
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

VERSION = re.search(r'^__version__ = "([^"]+)"', open("slim_diffusers/__init__.py", encoding="utf-8").read(), re.M).group(1)



class BuildPyWithHubCards(build_py):
    """Ships the top-level ``hub_cards/`` (model and dataset card templates, kept there so that the checkout
    shows where a card comes from) inside the wheel as ``slim_diffusers/hub_cards``, where an installed
    training script looks for it. An editable install reads the checkout's folder and copies nothing; a
    ``package_dir`` mapping would do the same for the wheel but push editable installs onto setuptools'
    import-hook strategy."""

    def run(self):
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "slim_diffusers" / "hub_cards"
        self.mkpath(str(target))
        for card in sorted(Path("hub_cards").glob("*.md")):
            self.copy_file(str(card), str(target / card.name))


setup(
    name="slim-diffusers",
    version=VERSION,
    description="SLIM: semantic-based low-bitrate image compression for machines, built on diffusers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["slim_diffusers", "slim_diffusers.*"]),
    # the packages sit at the top of the checkout: saying so lets an editable install (make) use a plain .pth file,
    # without setuptools' notice about same-named folders that its import-hook strategy prints
    package_dir={"": "."},
    # data files by explicit globs only: include_package_data would also take them from the sdist manifest and warn
    # that each data folder ("slim_diffusers.assets.toy.slim.unet", ...) looks like a package left out
    package_data={"slim_diffusers": ["assets/**/*"]},
    cmdclass={"build_py": BuildPyWithHubCards},
    python_requires=">=3.10",
    install_requires=[
        # torch is left unpinned on purpose: the registry's newest build with its matching torchvision
        # (compressai and lpips import torchvision) is what users get; see ../shared/ENVIRONMENT.md
        "torch>=2.1",
        "torchvision",
        "diffusers>=0.30",
        "transformers>=4.40",
        "accelerate>=0.30",
        "huggingface_hub>=0.23",
        "safetensors",
        "compressai>=1.2.6",
        # compressai pins numpy<2, and pyarrow>=26 needs NumPy 2: 24.0.0 is the newest pair that imports
        "numpy<2",
        "pyarrow==24.0.0",
        "datasets>=2.19",
        "peft>=0.10",
        "Pillow",
        "tqdm",
    ],
    extras_require={
        "train": ["lpips", "tensorboard", "matplotlib", "scipy"],
        # the web demo (`slim app`, slim_diffusers.app); matplotlib draws its bit-allocation map
        "app": ["gradio>=5", "matplotlib"],
        # gradio_client and selenium drive the web demo's tests (Chromium comes from the system: .ci/run)
        "test": ["pytest", "pytest-xdist", "lpips", "matplotlib", "scipy", "tensorboard", "gradio>=5", "gradio_client", "selenium"],
    },
    entry_points={"console_scripts": ["slim=slim_diffusers.cli:main"]},
)
