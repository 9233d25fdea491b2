//! The stages a Space goes through, with the Hub's names (`huggingface_hub`'s `SpaceStage`).

use serde::Serialize;

/// Where a Space is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Stage {
    /// The repo has no file to run (`app_file` missing).
    NoAppFile,
    /// The README's configuration cannot be run.
    ConfigError,
    /// Its environment is being built.
    Building,
    /// The environment failed to build; the build log says why.
    BuildError,
    /// The app is starting (after a build, a restart or a wake).
    AppStarting,
    Running,
    /// Running the previous commit while the new one builds.
    RunningBuilding,
    /// Running the previous commit while the new one starts.
    RunningAppStarting,
    /// The app exited or never answered; the run log says why.
    RuntimeError,
    /// Paused by its owner; only a restart brings it back.
    Paused,
    /// Stopped after its sleep time without requests; the next request wakes it.
    Sleeping,
    /// Not started on this node yet.
    Stopped,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::NoAppFile => "NO_APP_FILE",
            Stage::ConfigError => "CONFIG_ERROR",
            Stage::Building => "BUILDING",
            Stage::BuildError => "BUILD_ERROR",
            Stage::AppStarting => "APP_STARTING",
            Stage::Running => "RUNNING",
            Stage::RunningBuilding => "RUNNING_BUILDING",
            Stage::RunningAppStarting => "RUNNING_APP_STARTING",
            Stage::RuntimeError => "RUNTIME_ERROR",
            Stage::Paused => "PAUSED",
            Stage::Sleeping => "SLEEPING",
            Stage::Stopped => "STOPPED",
        }
    }

    /// Whether requests to the app can be served now.
    pub fn serving(self) -> bool {
        matches!(
            self,
            Stage::Running | Stage::RunningBuilding | Stage::RunningAppStarting
        )
    }

    /// Whether the Space is on its way to serving (a request may wait for it).
    pub fn on_the_way(self) -> bool {
        matches!(self, Stage::Building | Stage::AppStarting)
    }

    /// The stage while a new build runs, given what is serving now.
    pub(crate) fn building(serving: bool) -> Stage {
        if serving {
            Stage::RunningBuilding
        } else {
            Stage::Building
        }
    }

    /// The stage while a new app starts, given what is serving now.
    pub(crate) fn starting(serving: bool) -> Stage {
        if serving {
            Stage::RunningAppStarting
        } else {
            Stage::AppStarting
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_hubs() {
        for stage in [
            Stage::NoAppFile,
            Stage::ConfigError,
            Stage::Building,
            Stage::BuildError,
            Stage::AppStarting,
            Stage::Running,
            Stage::RunningBuilding,
            Stage::RunningAppStarting,
            Stage::RuntimeError,
            Stage::Paused,
            Stage::Sleeping,
            Stage::Stopped,
        ] {
            let json = serde_json::to_value(stage).unwrap();
            assert_eq!(json, stage.as_str());
        }
        assert_eq!(Stage::building(true), Stage::RunningBuilding);
        assert_eq!(Stage::starting(false), Stage::AppStarting);
    }
}
