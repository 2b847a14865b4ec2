"""kbchat's business logic: parsing, chunking, embedding, ingestion, retrieval and answering."""
