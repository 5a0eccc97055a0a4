"""One module per artifact format (embedding, embedding_card, hypernetwork), where embeddings live in the
embeddings folder (embedding_files), the `.pt` reader and writer they share (a1111_pickle), and `identify`,
which tells what any artifact file is."""
