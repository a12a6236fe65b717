"""AerialSeg: referring-expression segmentation of aerial images on MMSegmentation."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def read_version() -> str:
    namespace: dict = {}
    exec((ROOT / "aerialseg" / "version.py").read_text(), namespace)
    return namespace["__version__"]


def read_requirements(name: str) -> list[str]:
    lines = (ROOT / "requirements" / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="aerialseg",
    version=read_version(),
    description="Open-vocabulary referring segmentation of aerial and satellite images",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["aerialformats*", "aerialseg*", "datagen*", "llm*"]),
    include_package_data=True,
    # Default configs travel with the packages so non-editable installs find them too.
    package_data={
        "datagen": ["configs/*.yaml"],
        "llm": ["configs/*.yaml"],
        "aerialseg.serve": ["static/*"],
    },
    # torch, torchvision and mmcv need special install steps (see the Makefile), so they are not
    # listed here: pip would otherwise replace the CUDA torch or try an unbuildable mmcv wheel.
    install_requires=read_requirements("runtime.txt"),
    extras_require={"tests": read_requirements("tests.txt")},
    entry_points={
        "console_scripts": [
            "aerialseg=aerialseg.cli:main",
            "datagen=datagen.cli:main",
            "llm=llm.cli:main",
        ]
    },
)
