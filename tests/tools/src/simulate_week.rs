//! `simulate-week`: best-fit against first-fit assignment on generated clinic weeks, in one run.

/// Books `weeks` generated clinic weeks with each strategy and prints the share of requests
/// served and the utilization of each.
pub fn run(weeks: u64) {
    use domain::scheduling::assignment::{simulate, Scenario, Strategy};
    println!(
        "clinic weeks: {weeks} (12 practitioners in 4 specialties, 5 days of 8 h, ~110% demand)"
    );
    println!(
        "{:<12} {:>10} {:>10} {:>12}",
        "strategy", "requests", "served", "utilization"
    );
    let mut totals = Vec::new();
    for strategy in [Strategy::BestFit, Strategy::FirstFit] {
        let (mut requests, mut served, mut utilization) = (0, 0, 0.0);
        for seed in 0..weeks {
            let outcome = simulate(strategy, &Scenario::clinic_week(seed));
            requests += outcome.requests;
            served += outcome.served;
            utilization += outcome.utilization;
        }
        let utilization = utilization / weeks.max(1) as f64;
        println!(
            "{:<12} {:>10} {:>9.1}% {:>11.1}%",
            strategy.code(),
            requests,
            100.0 * served as f64 / requests.max(1) as f64,
            100.0 * utilization
        );
        totals.push(utilization);
    }
    if let [best, first] = totals[..] {
        println!(
            "best fit / first fit utilization: {:.3}",
            best / first.max(f64::EPSILON)
        );
    }
}
