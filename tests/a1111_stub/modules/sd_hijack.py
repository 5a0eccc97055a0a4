from modules import record


class EmbeddingDatabase:
    def load_textual_inversion_embeddings(self, force_reload: bool = False) -> None:
        record("load_textual_inversion_embeddings", force_reload)


class StableDiffusionModelHijack:
    embedding_db = EmbeddingDatabase()


model_hijack = StableDiffusionModelHijack()
