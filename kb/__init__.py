"""Service-item knowledge base: schema, loader, validator, lexicon and versioned builds."""

from kb.errors import KbError, KbFileError
from kb.loader import KnowledgeBase, load_knowledge_base
from kb.schema import ServiceItem

__all__ = ["KbError", "KbFileError", "KnowledgeBase", "ServiceItem", "load_knowledge_base"]
