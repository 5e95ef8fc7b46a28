"""The Spark stages: sky (synthetic coadds), 4a manifest, 4b coadd cache, 4c inject (with its row renderer), 4d completeness."""
