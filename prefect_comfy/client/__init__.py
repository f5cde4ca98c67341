"""The Comfy developer API client: REST (:mod:`.rest`), the event stream (:mod:`.ws`), waiting (:mod:`.hub`)."""
