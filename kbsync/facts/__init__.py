"""Facts: the schema, YAML and RDF readers/writers, and the knowledge-base loader."""

from kbsync.facts.load import FACT_SUFFIXES, fact_files, is_fact_file, load_knowledge_base, merge
from kbsync.facts.rdf_io import parse_rdf, read_rdf
from kbsync.facts.rdf_write import to_graph, write_rdf
from kbsync.facts.schema import Fact, KnowledgeBase, LocalityProbe, Relation
from kbsync.facts.source import FileContent, Location
from kbsync.facts.yaml_io import dump_yaml, kb_to_yaml, parse_yaml_facts, read_yaml_facts

__all__ = ["Fact", "KnowledgeBase", "LocalityProbe", "Relation", "Location", "FileContent",
           "load_knowledge_base", "merge", "fact_files", "is_fact_file", "FACT_SUFFIXES",
           "read_yaml_facts", "parse_yaml_facts", "dump_yaml", "kb_to_yaml",
           "read_rdf", "parse_rdf", "write_rdf", "to_graph"]
