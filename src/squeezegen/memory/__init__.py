"""Memory: probes of peak memory (`probes`), the will-it-fit check before heavy stages (`fit`),
and exact resident bytes of modules and pipelines (`accounting`)."""
