"""Output of reports for people: pictures, the HTML page and terminal glyphs."""
