"""CSV: one row per site (``sites``) or per unit (``units``), columns from the registry."""

from __future__ import annotations

from relu_doctor.output.document import Document


def sites(doc: Document) -> str:
    import pandas as pd

    return pd.concat([r.to_frame() for r in doc.reports], ignore_index=True).to_csv(index=False)


def units(doc: Document) -> str:
    import pandas as pd

    frame = pd.concat([r.units_frame() for r in doc.reports], ignore_index=True)
    return frame.to_csv(index=False)
