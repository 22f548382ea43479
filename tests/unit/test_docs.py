"""The docs stay true: generated pages match the code, every link inside the repository resolves."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_generated_pages_are_current() -> None:
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    pages = generate.render()
    assert set(pages) == {"records.md", "metrics.md"}
    for name, text in pages.items():
        assert (ROOT / "docs" / name).read_text(encoding="utf-8") == text, f"run docs/generate.py ({name})"


def test_every_record_field_and_metric_is_documented() -> None:
    from agent.core.record import ChainRecord, RequestRecord
    from exporters import names

    for model in (RequestRecord, ChainRecord):
        bare = [n for n, f in model.model_fields.items() if not f.description]
        assert bare == [], f"{model.__name__} fields without a description"
    records = (ROOT / "docs" / "records.md").read_text(encoding="utf-8")
    metrics = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert all(f"`{n}`" in records for n in RequestRecord.model_fields)
    assert all(f"`{n}`" in metrics for n in names.exposed_names())


def test_links_stay_inside_the_repository_and_resolve() -> None:
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+://", target):
                continue
            path = (page.parent / target).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                broken.append(f"{page.relative_to(ROOT)} → {target}")
    assert broken == []
