"""What the node accepts: every storage SOP class in every transfer syntax the worker decodes.

Every storage SOP class is accepted, so whatever a PACS routes here is kept and later shown
as triaged or rejected with a reason; nothing is refused merely for being unexpected.

pynetdicom deep-copies the acceptor's contexts for every association it accepts. For these
171 contexts (170 storage classes of 16 transfer syntaxes, and Verification) that copy
re-validated some 2,900 UIDs and cost about 46 ms of CPU per association, more than reading
a 10 MB radiograph, for a modality that opens one association per image
(`benchmarks/association_costs.py`, *Set-up*).
"""

from __future__ import annotations

import copy
from typing import Any

from pydicom import uid
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import Verification

# Every transfer syntax the worker can decode with the installed pydicom plugins
# (pylibjpeg-libjpeg: JPEG and JPEG-LS; pylibjpeg-openjpeg: JPEG 2000 and HTJ2K;
# pylibjpeg-rle: RLE), so that a sender never has to transcode; docs/conversion.md lists
# them. The three uncompressed ones come first and also serve Verification.
TRANSFER_SYNTAXES = [
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
    uid.RLELossless,
]


class AcceptedContext(PresentationContext):
    """A supported context whose per-association copy shares its UIDs.

    UIDs are immutable strings, so sharing them is safe; only the list of transfer syntaxes
    is the copy's own. Everything else in a context is a plain value that negotiation
    replaces rather than changes.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> AcceptedContext:
        copied = copy.copy(self)
        copied._transfer_syntax = list(self._transfer_syntax)
        return copied


def _context(abstract_syntax: str, transfer_syntaxes: list[str]) -> AcceptedContext:
    context = AcceptedContext()
    context.abstract_syntax = abstract_syntax
    context.transfer_syntax = transfer_syntaxes
    return context


def accepted_contexts() -> list[PresentationContext]:
    """The contexts the node's servers accept, as `AE.make_server(contexts=...)` takes them."""
    storage = [
        _context(str(context.abstract_syntax), TRANSFER_SYNTAXES)
        for context in AllStoragePresentationContexts
    ]
    return [*storage, _context(Verification, TRANSFER_SYNTAXES[:3])]
