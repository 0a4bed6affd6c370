from __future__ import annotations

from collections.abc import Iterator

import pytest

from .podman import IMAGE, ROOT, build, podman


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    """The LinguaMesh image, built from the repository's Dockerfile."""
    seconds = build(IMAGE, ROOT)
    size = int(podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout.strip())
    print(f"image {IMAGE}: built in {seconds:.0f} s, {size / 1e6:.0f} MB")
    yield IMAGE
