"""JSON: the report document ``{"tool", "version", "models": [...]}``, and the per-unit dump."""

from __future__ import annotations

import json

from relu_doctor.analyze.report import clean, reports_to_dict
from relu_doctor.output.document import Document, Failure


def sites(doc: Document) -> str:
    """The report document; a model that could not be scanned is ``{"model", "error"}`` in
    its place. A judged document (``check``) adds ``check`` and per model ``findings`` and
    ``healthy``; several models add ``timeline``, one entry per model in order."""
    data = reports_to_dict(list(doc.reports))
    if doc.failures:
        done = iter(data["models"])
        data["models"] = [
            {"model": i.model, "error": i.message} if isinstance(i, Failure) else next(done)
            for i in doc.items
        ]
    if len(doc.timeline) > 1:
        data["timeline"] = [clean(row.to_dict()) for row in doc.timeline]
    if doc.findings is not None:  # check: the verdict, thresholds and findings too
        from relu_doctor.output.verdict import json_additions

        data = json_additions(data, doc)
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def units(doc: Document) -> str:
    import pandas as pd

    frame = pd.concat([r.units_frame() for r in doc.reports], ignore_index=True)
    records = json.loads(frame.to_json(orient="records"))
    return json.dumps({"units": records}, indent=1) + "\n"
