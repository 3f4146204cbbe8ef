from .build import BuildConfig, BuildError, build
