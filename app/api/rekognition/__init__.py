"""Amazon Rekognition's face API on faceverify (issue 40): AWS JSON 1.1 signed with
Signature Version 4 (protocol.py, sigv4.py), the operations (operations.py), fields and
shapes (shapes.py), errors in AWS's form (errors.py)."""
