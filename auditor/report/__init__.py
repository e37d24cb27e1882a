"""The attestation report: one canonical document built from the store alone,
rendered as HTML, JSON, SARIF and JUnit, and attested by a signed in-toto statement.

    from auditor.report.bundle import make_report, verify_bundle
    outcome = make_report(store_url, out_dir, pack, formats=["html", "json", "sarif", "junit", "intoto"], sign_key=key)
    checked = verify_bundle(out_dir, public_key_path)   # .ok, .lines
"""
