"""Media helpers shared by the `subdefs` and `write_metadata` task types.

- `images`: Pillow thumbnails and previews (draft decoding, orientation, colour);
- `video`: ffmpeg frame and H.264 preview; `pdf`: first page via pdftoppm;
- `maker`: which sub-definitions a document gets and making them;
- `exiftool`: one supervised `exiftool -stay_open` child for metadata;
- `tools`: running external tools with timeouts; `files`: atomic output.
"""

from .errors import MediaError, ToolError, ToolNotFound, ToolTimeout
from .images import Made, Target
from .maker import Spec, as_specs, classify, make_subdefs

__all__ = [
    "Made", "MediaError", "Spec", "Target", "ToolError", "ToolNotFound", "ToolTimeout",
    "as_specs", "classify", "make_subdefs",
]
