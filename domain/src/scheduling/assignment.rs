//! Choosing which resource serves a request that allows several (any cardiologist, any
//! examination room): first fit takes the first one free; best fit takes the one whose free
//! gap around the request is smallest, keeping long gaps whole for long appointments.
//!
//! [`simulate`] books a generated clinic week with a strategy, for the comparison the
//! `simulate-week` command prints.

use serde::Serialize;

crate::code_enum!(
    /// How a resource is chosen among those that could serve a request.
    Strategy { FirstFit = "first-fit", BestFit = "best-fit" }
);

/// A candidate placement: a resource (its index), a start (minutes, or any ordered instant
/// measure), and the length of the free gap the request would sit in (minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub resource: usize,
    pub start: i64,
    pub gap_minutes: i64,
}

/// The placement `strategy` picks among `candidates`: first fit the earliest start on the
/// first resource; best fit the tightest gap (least free time left around it), then the
/// earliest start.
pub fn choose(strategy: Strategy, candidates: &[Candidate]) -> Option<Candidate> {
    match strategy {
        Strategy::FirstFit => candidates
            .iter()
            .min_by_key(|c| (c.start, c.resource))
            .copied(),
        Strategy::BestFit => candidates
            .iter()
            .min_by_key(|c| (c.gap_minutes, c.start, c.resource))
            .copied(),
    }
}

/// One simulated request: a day, the window its start may fall in (minutes into the day,
/// inclusive), a length, and the resources that could serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub day: usize,
    pub earliest: i64,
    pub latest: i64,
    pub minutes: i64,
    pub allowed: Vec<usize>,
}

/// What a strategy achieved over a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Outcome {
    pub requests: usize,
    pub served: usize,
    /// Booked minutes over open minutes.
    pub utilization: f64,
}

impl Outcome {
    pub fn served_share(&self) -> f64 {
        self.served as f64 / self.requests.max(1) as f64
    }
}

/// A clinic week: `resources` practitioners open `open_minutes` a day for `days` days, and the
/// requests in the order they arrive.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub resources: usize,
    pub days: usize,
    pub open_minutes: i64,
    pub requests: Vec<Request>,
}

/// The slot grid of the simulation, in minutes.
const GRID: i64 = 15;

fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Scenario {
    /// A deterministic week from `seed`: 12 practitioners in 4 specialties, 5 days of 8 hours
    /// on a 15-minute grid, requests of 15 to 120 minutes (most short, a few long) at random
    /// starts, each for any practitioner of one specialty (or, one in five, one named
    /// practitioner), about 110% of capacity in all.
    pub fn clinic_week(seed: u64) -> Self {
        let (resources, days, open_minutes) = (12, 5, 8 * 60);
        let specialty = |r: usize| r % 4;
        let capacity = (resources * days) as i64 * open_minutes;
        let mut requests = Vec::new();
        let mut demand = 0;
        let mut n = seed.wrapping_mul(1_000_003);
        while demand < capacity * 11 / 10 {
            n += 1;
            let bits = mix(n);
            let minutes = match bits % 20 {
                0 => 120,
                1..=3 => 60,
                4..=9 => 30,
                _ => 15,
            };
            let earliest = ((bits >> 8) % ((open_minutes - minutes) as u64 / 15 + 1)) as i64 * 15;
            // The patient can come within two hours of their preferred time.
            let latest = (earliest + 120).min(open_minutes - minutes);
            let day = ((bits >> 24) % days as u64) as usize;
            let wanted = ((bits >> 32) % 4) as usize;
            let allowed = if (bits >> 40) % 5 == 0 {
                vec![wanted + 4 * ((bits >> 44) % 3) as usize]
            } else {
                (0..resources).filter(|r| specialty(*r) == wanted).collect()
            };
            demand += minutes;
            requests.push(Request {
                day,
                earliest,
                latest,
                minutes,
                allowed,
            });
        }
        Self {
            resources,
            days,
            open_minutes,
            requests,
        }
    }
}

/// Books `scenario`'s requests in order with `strategy`: each at its start on a free allowed
/// resource, or not at all.
pub fn simulate(strategy: Strategy, scenario: &Scenario) -> Outcome {
    // Booked (start, end) per resource and day, kept sorted.
    let mut booked: Vec<Vec<Vec<(i64, i64)>>> =
        vec![vec![Vec::new(); scenario.days]; scenario.resources];
    let mut served = 0;
    let mut minutes = 0;
    for request in &scenario.requests {
        let mut candidates = Vec::new();
        for &r in &request.allowed {
            let day = &booked[r][request.day];
            let mut start = request.earliest;
            while start <= request.latest {
                let end = start + request.minutes;
                if !day.iter().any(|&(s, e)| s < end && start < e) {
                    let before = day
                        .iter()
                        .filter(|&&(_, e)| e <= start)
                        .map(|&(_, e)| e)
                        .max()
                        .unwrap_or(0);
                    let after = day
                        .iter()
                        .filter(|&&(s, _)| s >= end)
                        .map(|&(s, _)| s)
                        .min()
                        .unwrap_or(scenario.open_minutes);
                    candidates.push(Candidate {
                        resource: r,
                        start,
                        gap_minutes: after - before,
                    });
                }
                start += GRID;
            }
        }
        if let Some(choice) = choose(strategy, &candidates) {
            let day = &mut booked[choice.resource][request.day];
            day.push((choice.start, choice.start + request.minutes));
            day.sort_unstable();
            served += 1;
            minutes += request.minutes;
        }
    }
    let open = (scenario.resources * scenario.days) as i64 * scenario.open_minutes;
    Outcome {
        requests: scenario.requests.len(),
        served,
        utilization: minutes as f64 / open.max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_takes_the_tightest_gap_and_first_fit_the_first() {
        let candidates = [
            Candidate {
                resource: 0,
                start: 60,
                gap_minutes: 480,
            },
            Candidate {
                resource: 1,
                start: 60,
                gap_minutes: 45,
            },
            Candidate {
                resource: 2,
                start: 60,
                gap_minutes: 45,
            },
        ];
        assert_eq!(choose(Strategy::FirstFit, &candidates).unwrap().resource, 0);
        assert_eq!(choose(Strategy::BestFit, &candidates).unwrap().resource, 1);
        assert_eq!(choose(Strategy::BestFit, &[]), None);
    }

    #[test]
    fn best_fit_keeps_room_for_the_long_appointment_first_fit_loses() {
        // Two rooms; room 0 has a 30-minute gap, room 1 is empty. A 30-minute request, then
        // a 2-hour one at the same time.
        let scenario = Scenario {
            resources: 2,
            days: 1,
            open_minutes: 240,
            requests: vec![
                Request {
                    day: 0,
                    earliest: 0,
                    latest: 0,
                    minutes: 60,
                    allowed: vec![0],
                },
                Request {
                    day: 0,
                    earliest: 90,
                    latest: 90,
                    minutes: 150,
                    allowed: vec![0],
                },
                Request {
                    day: 0,
                    earliest: 60,
                    latest: 60,
                    minutes: 30,
                    allowed: vec![0, 1],
                },
                Request {
                    day: 0,
                    earliest: 0,
                    latest: 0,
                    minutes: 240,
                    allowed: vec![0, 1],
                },
            ],
        };
        assert_eq!(simulate(Strategy::BestFit, &scenario).served, 4);
        assert_eq!(simulate(Strategy::FirstFit, &scenario).served, 4);
        let scenario = Scenario {
            requests: vec![
                Request {
                    day: 0,
                    earliest: 0,
                    latest: 0,
                    minutes: 60,
                    allowed: vec![1],
                },
                Request {
                    day: 0,
                    earliest: 90,
                    latest: 90,
                    minutes: 150,
                    allowed: vec![1],
                },
                Request {
                    day: 0,
                    earliest: 60,
                    latest: 60,
                    minutes: 30,
                    allowed: vec![0, 1],
                },
                Request {
                    day: 0,
                    earliest: 0,
                    latest: 0,
                    minutes: 240,
                    allowed: vec![0],
                },
            ],
            ..scenario
        };
        assert_eq!(simulate(Strategy::BestFit, &scenario).served, 4);
        assert_eq!(simulate(Strategy::FirstFit, &scenario).served, 3);
    }

    #[test]
    fn on_a_clinic_week_best_fit_serves_at_least_as_many() {
        for seed in 0..5 {
            let week = Scenario::clinic_week(seed);
            let best = simulate(Strategy::BestFit, &week);
            let first = simulate(Strategy::FirstFit, &week);
            assert!(
                best.utilization >= first.utilization,
                "seed {seed}: {best:?} vs {first:?}"
            );
            assert!(best.utilization <= 1.0);
        }
    }
}
