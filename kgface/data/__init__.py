"""Datasets: the procedural phantom-face benchmark (`kgface.data.phantom`) and adapters to public face datasets."""
