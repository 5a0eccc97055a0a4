// liandan inside A1111: when a job has saved a checkpoint, click the WebUI's own refresh button next to the
// model dropdown so the new file can be picked at once (the server-side list is already refreshed).
(function () {
    const seen = new Set();
    onUiUpdate(function () {
        for (const marker of gradioApp().querySelectorAll(".liandan-refresh-checkpoints")) {
            const key = marker.dataset.key;
            if (seen.has(key)) continue;
            seen.add(key);
            const refresh = gradioApp().querySelector("#refresh_sd_model_checkpoint");
            if (refresh) refresh.click();
        }
    });
})();
