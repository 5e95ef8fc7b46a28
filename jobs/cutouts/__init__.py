"""Where real pixels come from: DR10 coadd bricks, cutout folders, the Legacy Surveys cutout service; one standard cutout."""
