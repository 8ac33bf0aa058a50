"""The repository domain: databoxes (collections, records, status bits, fields), the hotfolder
ingest, `.phrasea.xml` and caption files, and the full-text index (`repository.fulltext`, the
`schedulerd-indexer` program).

The embedded default keeps one SQLite file per databox plus a storage folder for documents.
See docs/databox.md for the schema, for set-based SQL over it, and docs/architecture.md for the
layers: task types use what this module exports, nothing else of the package. The engine
(`schedulerd`) does not import this package: `[databoxes]` and the commands below reach it by
the entry points declared in pyproject.toml (groups `schedulerd.config`, `schedulerd.commands`).
"""

from .backend import database_errors
from .caption import MAX_BYTES as CAPTION_MAX_BYTES
from .caption import CaptionError, parse_caption
from .checks import collection_names, collections_required, creating_collections
from .commands.databox import DATABOX_ARG, JSON_ARG, open_box
from .databox import Databox, awaited, display_name, open_databox
from .events import PER_RECORD, record_jobs
from .fields import MULTI_SEPARATOR, embedded_fields, normalize_date, now_iso
from .fulltext import FulltextError, open_index
from .hotfolder import FileStat, Rules, Scan, Scanner, Tree, split
from .ingest import BatchResult, Ingestor, Journal, Unit
from .kept import KEPT, KeptDataboxes
from .model import (
    Collection,
    DataboxError,
    DataboxMissing,
    DuplicateCollection,
    NewRecord,
    Record,
    RecordType,
    Subdef,
    UnknownCollection,
    UnknownRecord,
)
from .phrasea_xml import NAME as PHRASEA_XML
from .phrasea_xml import FolderConfig, XmlError, parse_phrasea_xml, render_phrasea_xml
from .settings import FIELD_NAME_RE, RECORD_EVENTS, DataboxSettings, FieldSettings, FieldType, SubdefSettings
from .status import ALL as ALL_BITS
from .status import NO_MASK, StatusMask, format_mask, format_status, parse_mask
from .storage import DocumentStore, SourceError, StorageError, guess_mime

__all__ = [
    "KEPT",
    "KeptDataboxes",
    "record_jobs",
    "MULTI_SEPARATOR",
    "embedded_fields",
    "FieldSettings",
    "open_index",
    "RECORD_EVENTS",
    "PER_RECORD",
    "FulltextError",
    "ALL_BITS",
    "CAPTION_MAX_BYTES",
    "CaptionError",
    "Collection",
    "DATABOX_ARG",
    "Databox",
    "DataboxError",
    "DataboxMissing",
    "DataboxSettings",
    "DocumentStore",
    "DuplicateCollection",
    "FIELD_NAME_RE",
    "FieldType",
    "FolderConfig",
    "Ingestor",
    "BatchResult",
    "FileStat",
    "Rules",
    "Scan",
    "JSON_ARG",
    "Journal",
    "NO_MASK",
    "NewRecord",
    "PHRASEA_XML",
    "Record",
    "RecordType",
    "Scanner",
    "SourceError",
    "StatusMask",
    "StorageError",
    "Subdef",
    "SubdefSettings",
    "Tree",
    "Unit",
    "UnknownCollection",
    "UnknownRecord",
    "XmlError",
    "awaited",
    "collection_names",
    "collections_required",
    "creating_collections",
    "database_errors",
    "display_name",
    "format_mask",
    "format_status",
    "guess_mime",
    "normalize_date",
    "now_iso",
    "open_box",
    "open_databox",
    "parse_caption",
    "parse_mask",
    "parse_phrasea_xml",
    "render_phrasea_xml",
    "split",
]
