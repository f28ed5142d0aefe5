"""Runtime core: settings, device policy, model manager, resolution, errors, media, metrics."""
