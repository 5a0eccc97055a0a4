from modules import record


class EmbeddingDatabase:
    def load_textual_inversion_embeddings(self, force_reload: bool = False) -> None:
        """A1111 reads the expected vector width from `shared.sd_model`, a property that loads the selected
        checkpoint when no model is loaded yet."""
        from modules import sd_models

        if sd_models.model_data.sd_model is None:
            record("load_model")
        record("load_textual_inversion_embeddings", force_reload)


class StableDiffusionModelHijack:
    embedding_db = EmbeddingDatabase()


model_hijack = StableDiffusionModelHijack()
